"""The VS Code settings (editors/vscode/package.json) mirror the server's initializationOptions."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from dgemma_lsp.options import Options

MANIFEST = Path(__file__).resolve().parents[1] / "editors" / "vscode" / "package.json"
CLIENT_SETTINGS = ("server.", "trace.")  # the extension's own; every other dgemma.* goes to the server


def test_every_server_option_is_a_setting_with_the_same_default() -> None:
    properties = json.loads(MANIFEST.read_text())["contributes"]["configuration"]["properties"]
    settings = {
        key.removeprefix("dgemma."): spec
        for key, spec in properties.items()
        if not key.removeprefix("dgemma.").startswith(CLIENT_SETTINGS)
    }
    fields = {field.encode_name: field for field in msgspec.structs.fields(Options)}
    assert sorted(settings) == sorted(fields)
    for name, field in fields.items():
        default = field.default_factory() if field.default is msgspec.NODEFAULT else field.default
        spec = settings[name]
        assert spec["default"] == default, name
        if default is None:
            assert "null" in spec["type"], name
