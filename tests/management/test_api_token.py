"""`manage.py api_token <user>`: prints the key every time (creating it if missing); --quiet
prints only the key, for `TOKEN=$(python manage.py api_token admin --quiet)`."""

from __future__ import annotations

import subprocess
import sys
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client
from rest_framework.authtoken.models import Token

from tests.processes import ROOT, process_env


def api_token(*args: str) -> str:
    out = StringIO()
    call_command("api_token", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def admin() -> User:
    return User.objects.create_superuser("admin", password="x")


@pytest.mark.django_db
def test_it_prints_the_key_when_it_creates_it_and_every_time_after(admin: User) -> None:
    first = api_token("admin")
    key = Token.objects.get(user=admin).key
    assert first.splitlines()[0] == f"API token of 'admin': {key}"
    assert "(created;" in first
    again = api_token("admin")
    assert again.splitlines()[0] == f"API token of 'admin': {key}"
    assert f"(created {Token.objects.get(user=admin).created:%Y-%m-%d};" in again


@pytest.mark.django_db
def test_it_prints_only_the_key_when_quiet(admin: User) -> None:
    created = api_token("admin", "--quiet")
    key = Token.objects.get(user=admin).key
    assert created == f"{key}\n"
    assert api_token("admin", "--quiet") == f"{key}\n"
    rotated = api_token("admin", "--rotate", "--quiet")
    assert rotated != created
    assert rotated == f"{Token.objects.get(user=admin).key}\n"
    assert api_token("admin", "--revoke", "--quiet") == ""
    assert not Token.objects.exists()


@pytest.mark.django_db
def test_it_still_refuses_an_unknown_user_when_quiet() -> None:
    with pytest.raises(CommandError, match="no user named 'nobody'"):
        api_token("nobody", "--quiet")


@pytest.mark.django_db(transaction=True)
def test_it_gives_a_shell_variable_a_key_the_api_takes(admin: User) -> None:
    script = f'TOKEN=$("{sys.executable}" manage.py api_token admin --quiet) && printf "%s" "$TOKEN"'
    done = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=process_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == Token.objects.get(user=admin).key
    assert Client(HTTP_AUTHORIZATION=f"Token {done.stdout}").get("/api/tasks/").status_code == 200
