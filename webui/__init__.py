"""Front doors: the launcher, the HTTP API, the Gradio UI and the command lines.

Importing this package makes the libraries work offline: nothing is fetched from a model hub and no usage
statistics are sent, unless the user sets these variables otherwise.
"""

import os

for _key, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1"),
                     ("GRADIO_ANALYTICS_ENABLED", "False"), ("DO_NOT_TRACK", "1")):
    os.environ.setdefault(_key, _value)
