"""The whole project's command-line plumbing (`command_line`) and atomic file writing (`atomic_files`).

The floor beneath every other layer: each of them may import it, and it imports only the standard library, torch
and transformers.
"""
