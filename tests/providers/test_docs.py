"""docs/providers.md stays true: every template has a section, and every
`provider upsert` example in it works."""

from __future__ import annotations

import io
import re
import shlex
from pathlib import Path

import pytest
from django.core.management import call_command

from broker_app.models import Provider
from broker_app.providers.registry import resolve
from broker_app.providers.spec import catalog, missing_params, resolve_values, template

DOC = Path(__file__).resolve().parents[2] / "docs" / "providers.md"


def examples() -> list[list[str]]:
    text = DOC.read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("python manage.py provider upsert"):
                commands.append(shlex.split(line.replace("…", "x"))[2:])
    return commands


def test_every_template_has_a_section():
    headings = re.findall(r"^### .*$", DOC.read_text(), flags=re.M)
    keys = {key for heading in headings for key in re.findall(r"`([a-z0-9_]+)`", heading)}
    assert keys == set(catalog())


@pytest.mark.django_db
def test_every_upsert_example_works():
    commands = examples()
    assert len(commands) >= len(catalog())
    for args in commands:
        if "--discovery-url" in args:
            args = [*args, "--no-check"]  # its discovery URL is an example host
        out = io.StringIO()
        call_command(*args, stdout=out, stderr=io.StringIO())
        name = args[args.index("--name") + 1]
        assert out.getvalue().startswith(("created provider", "updated provider")), args
        provider = Provider.objects.get(name=name)
        entry = template(provider.template)
        if "--discovery-url" not in args and not missing_params(
            entry, resolve_values(entry, fixed=provider.settings, given={})
        ):
            resolve(provider)  # usable as configured, without per-connection parameters
