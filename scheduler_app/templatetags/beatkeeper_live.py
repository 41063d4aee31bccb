"""`{% live_region "id" every=5 %}`: the attributes of an element that refreshes itself.

Put it in the tag of the region's outermost element, in a template of its own that the page
includes (`<div {% live_region "bk-workers" every=5 %}>...</div>`). Every `every` seconds htmx
GETs the page's own URL (its query string too, so filters hold) and swaps in the element of
the same id from the answer: a view that renders only the region for `request.htmx`
(scheduler_app/admin/live.py `render`) saves the rest of the page, and one that does not
still works. A refresh waits while the operator is in the region (a focused field, a ticked
box) or the tab is hidden; a failed one leaves the last content and says so (live.js). The
page loads htmx with `{% load django_htmx %}{% htmx_script %}` and beatkeeper/live.js."""

from __future__ import annotations

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString

register = template.Library()


@register.simple_tag(takes_context=True)
def live_region(context: template.Context, element_id: str, every: int = 5) -> SafeString:
    request = context["request"]
    return format_html(
        'id="{0}" class="bk-live" hx-get="{1}" hx-trigger="every {2}s [bkLiveIdle(\'{0}\')]" '
        'hx-select="#{0}" hx-target="this" hx-swap="outerHTML" data-every="{2}"',
        element_id,
        request.get_full_path(),
        int(every),
    )
