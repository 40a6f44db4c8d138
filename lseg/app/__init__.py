"""The interactive web demo: ``python -m lseg.app --checkpoint CKPT`` (needs the ``app`` extra).

``core`` holds what a request does (limits, inference, pictures) and imports no web framework;
``ui`` is the Gradio page and server; ``cluster`` runs the server as a cluster job.
"""
