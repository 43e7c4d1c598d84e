"""The fast tests: each part on its own, in one process or a few for seconds; about a minute in all
(`.venv/bin/python -m pytest tests/unit`). The tests of whole runs, processes and faults are in tests/."""
