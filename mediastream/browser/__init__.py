"""The operator's pages in a browser: /calls and /phone (pages.py), fed by live.py."""
