"""Shared test set-up. pytest puts this folder on sys.path (rootdir conftest), so tests import
`pipeline_helpers` (tiny configs, the stage runner) and `lm_fixtures` (tiny offline models)."""
