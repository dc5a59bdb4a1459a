"""Loaders of real data that installs offline (Debian packages, scikit-learn) and task builders."""
from lsb_mm_experiments.datasets.fashion_mnist import FASHION_CLASSES, export_labelled_folder, load_fashion_mnist
from lsb_mm_experiments.datasets.manpages import ManPage, load_manpages, manpage_files
from lsb_mm_experiments.datasets.tuxpaint import Stamp, Stamps, load_tuxpaint

__all__ = ["ManPage", "load_manpages", "manpage_files", "Stamp", "Stamps", "load_tuxpaint", "load_fashion_mnist",
           "export_labelled_folder", "FASHION_CLASSES"]
