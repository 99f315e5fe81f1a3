"""Where the tests find the checkout (one definition for every test module)."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_CONFIGS = os.path.join(REPO, 'gin_configs')
DOCS = os.path.join(REPO, 'docs')
