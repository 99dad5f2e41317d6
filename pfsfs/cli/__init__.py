"""The ``pfsfs`` command line (click). Only this package prints."""
