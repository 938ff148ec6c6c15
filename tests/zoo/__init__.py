"""The third-party model zoo: models nobody here wrote, built small with random weights (``test_zoo.py``)."""
