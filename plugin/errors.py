"""Typed errors raised by services; plugin/app.py turns each into one answer for Docker."""

from __future__ import annotations


class PluginError(Exception):
    """Base: ``status`` is the HTTP status of the answer. Never 404: Docker reads it as "not implemented"."""

    status = 500


class BadRequest(PluginError):
    status = 400


class UnknownObject(PluginError):
    """The request names a network, endpoint or pool this agent does not know."""

    status = 400


class ConflictError(PluginError):
    status = 409


class IdentityRefused(ConflictError):
    """Another host holds this host's id in the store (a cloned state directory): every request is
    refused with the cause and the fix until the id is ours again."""


class StoreDown(PluginError):
    status = 503


class KernelError(PluginError):
    status = 500
