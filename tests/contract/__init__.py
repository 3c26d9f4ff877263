"""The backend contract suite (suite.py) and one module per backend that runs it."""
