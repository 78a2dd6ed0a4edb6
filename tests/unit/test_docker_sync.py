from plugin.docker_sync import managed_plugin_id

PLUGIN_ID = "a" * 64


def test_managed_plugin_id_from_mountinfo(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:21 / / rw shared:1 - overlay overlay rw\n"
        f"30 22 0:25 /docker/plugins/{PLUGIN_ID} /run/docker/plugins rw - tmpfs tmpfs rw\n"
    )
    assert managed_plugin_id(str(info)) == PLUGIN_ID


def test_no_plugin_mount_means_legacy(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text("30 22 0:25 / /run/docker/plugins rw - tmpfs tmpfs rw\n")
    assert managed_plugin_id(str(info)) is None
    assert managed_plugin_id(str(tmp_path / "missing")) is None
