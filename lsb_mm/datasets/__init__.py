"""Loaders of real data that installs offline (Debian packages, scikit-learn) and task builders."""
from .manpages import ManPage, load_manpages, manpage_files

__all__ = ["ManPage", "load_manpages", "manpage_files"]
