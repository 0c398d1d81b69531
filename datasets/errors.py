"""Errors a user can cause. The CLI prints their message on one line and exits 2."""


class PosepipeError(Exception):
    """A usage or fatal input error: the message names the file, record and field."""
