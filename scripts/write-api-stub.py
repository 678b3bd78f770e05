"""Write ftprep/__init__.pyi (pipeline/__init__.pyi) from the commands' settings, for editors.

    .venv/bin/python scripts/write-api-stub.py

Run it after adding, renaming or removing a setting; tests/test_api_stub.py fails until then.
"""

from ftprep.api_stub import write_stub

if __name__ == "__main__":
    print(f"wrote {write_stub()}")
