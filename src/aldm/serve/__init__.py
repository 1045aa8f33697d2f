"""The web UI of paper Appendix A: ``aldm serve`` (FastAPI app, job queue, viewer page)."""
