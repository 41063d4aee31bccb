"""The input batteries' staff clients: one through the API (a token), one through the admin."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.hardening.input_kit import staff_clients


@pytest.fixture
def clients() -> tuple[Client, Client]:
    return staff_clients()


@pytest.fixture
def api(clients: tuple[Client, Client]) -> Client:
    return clients[0]


@pytest.fixture
def admin(clients: tuple[Client, Client]) -> Client:
    return clients[1]
