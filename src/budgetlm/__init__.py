"""budgetlm: train the best language model your hardware and time budget allow."""

__version__ = "0.1.0"
