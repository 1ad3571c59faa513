"""Numbered SQL migrations, applied in order by keygate.store.migrations."""
