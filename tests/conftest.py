import sys
from pathlib import Path

# The demo app's package (server/webapp) imports as ``webapp``, as it does in the image.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))
