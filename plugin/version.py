"""pyoverlay's own version, for the CLI and the agent's status."""

from importlib import metadata
from pathlib import Path


def version() -> str:
    """The installed package's version, else the source checkout's pyproject.toml's."""
    try:
        return metadata.version("pyoverlay")
    except metadata.PackageNotFoundError:
        import tomllib

        try:
            with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
                return tomllib.load(f)["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"
