"""Architecture search: PyGlove search spaces, algorithms, proxy trials and the Ray runner."""
