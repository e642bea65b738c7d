"""Tests of the bundled Flow Service emulator (``backfill.emulator``)."""
