"""Small helpers every layer of the package shares (files, tables, timing, flags).

Nothing here imports the rest of the package, so any module may import these.
"""
