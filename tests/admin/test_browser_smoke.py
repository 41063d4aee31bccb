"""The admin in a real browser: who gets in, who does not, and that it arrives styled."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from tests.browser import force_login, login, shot

pytestmark = pytest.mark.django_db(transaction=True)  # the live server's thread sees the test's rows
PASSWORD = "correct horse battery staple"


def stylesheet_loaded(page: Page, path: str) -> bool:
    """Whether the page has the stylesheet at `path` parsed: one that failed to load has no rules."""
    loaded: bool = page.evaluate(  # Array.some() answers a boolean
        "path => [...document.styleSheets].some(s => s.href && new URL(s.href).pathname === path"
        " && s.cssRules.length > 0)",
        path,
    )
    return loaded


def test_a_superuser_logs_in_and_sees_the_admin_index(page: Page, live_server: LiveServer) -> None:
    User.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    login(page, live_server.url, "operator", PASSWORD)
    expect(page).to_have_url(f"{live_server.url}/admin/")
    expect(page.locator("#user-tools")).to_contain_text("operator")
    expect(page.locator("#content-main").get_by_role("link", name="Users", exact=True)).to_be_visible()
    assert stylesheet_loaded(page, "/static/admin/css/base.css")
    shot(page, "index")


def test_the_login_form_refuses_a_user_who_is_not_staff(page: Page, live_server: LiveServer) -> None:
    User.objects.create_user("visitor", password=PASSWORD, is_staff=False)
    login(page, live_server.url, "visitor", PASSWORD)
    expect(page).to_have_url(f"{live_server.url}/admin/login/")
    expect(page.locator("#content .errornote")).to_contain_text("staff account")
    shot(page, "refused")


def test_a_logged_in_user_who_is_not_staff_gets_the_login_page(page: Page, live_server: LiveServer) -> None:
    force_login(page, live_server.url, User.objects.create_user("visitor", password=PASSWORD, is_staff=False))
    page.goto(f"{live_server.url}/admin/")
    expect(page).to_have_url(f"{live_server.url}/admin/login/?next=/admin/")
    expect(page.locator("#content")).to_contain_text("You are authenticated as visitor, but are not authorized")
    expect(page.locator("#content-main .module")).to_have_count(0)  # no app list
    shot(page, "login-page")


def test_an_anonymous_visit_to_the_admin_redirects_to_login(page: Page, live_server: LiveServer) -> None:
    response = page.goto(f"{live_server.url}/admin/")
    assert response is not None and response.request.redirected_from is not None
    assert response.request.redirected_from.url == f"{live_server.url}/admin/"
    expect(page).to_have_url(f"{live_server.url}/admin/login/?next=/admin/")
    expect(page.locator("#login-form")).to_be_visible()
    assert stylesheet_loaded(page, "/static/admin/css/login.css")
    shot(page, "login")
