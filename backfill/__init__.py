"""Re-ingest history into Adobe Experience Platform as Flow Service runs, exactly once."""

__version__ = "0.1.0"
