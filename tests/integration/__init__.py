"""train.py end to end: runs, resumes, fault injection, multi-process start-up, compiled steps
on fake devices."""
