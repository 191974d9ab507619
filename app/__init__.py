"""The MegaByte studio for people: the web app (`python -m app`) and the command line (`python -m app.cli`)."""

import os

# Nothing may call home: Gradio reads these when it is imported, by app.ui or app.handlers.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"
