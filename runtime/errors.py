"""The runtime's exceptions: one base, :class:`Error`, exported as ``comfyc.runtime.Error``.

Every error the runtime raises for a problem a user can fix — a damaged artifact, a bad param,
a missing model or image, a backend this machine cannot run — is an :class:`Error`, so a
program that deploys comfyc can catch them all in one place and show the message as it is.
The subclasses keep the standard base they had (``ValueError`` for bad input, ``RuntimeError``
for failures while running), so existing ``except ValueError`` code keeps working.

This module imports nothing: the node registry and the lean runtime both load it cheaply.
"""

from __future__ import annotations

__all__ = ["Error", "ProgramError", "ParamError"]


class Error(Exception):
    """Base of every error comfyc's runtime raises for something the user can fix."""


class ProgramError(Error, RuntimeError):
    """An op failed while running; the message names the node."""


class ParamError(Error, ValueError):
    """A runtime param is unknown, missing, or has the wrong type or range."""
