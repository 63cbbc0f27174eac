"""`python -m engine bench`: speed and memory side by side (speed.py), and against llama.cpp and
transformers (compare.py). Reference-only: the app never imports this package."""
