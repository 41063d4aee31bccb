"""/healthz: liveness that answers whatever the Host header, touching no database."""

from __future__ import annotations

from django.test import Client


def test_it_answers_a_probe_that_calls_by_ip_address() -> None:
    response = Client().get("/healthz", HTTP_HOST="10.244.1.17:8000")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_it_still_validates_the_host_of_every_other_page() -> None:
    assert Client().get("/admin/login/", HTTP_HOST="10.244.1.17:8000").status_code == 400


def test_it_answers_only_reads() -> None:
    for probe in ("/healthz", "/readyz", "/metrics"):
        response = Client().post(probe)
        assert response.status_code == 405, probe
        assert response["Allow"] == "GET, HEAD", probe
