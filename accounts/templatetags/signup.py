"""Whether the sign-in page offers "Sign up": the adapter's answer (the site setting or an
invitation in the session), asked the way django-allauth's own sign-up view asks it."""

from allauth.account.adapter import get_adapter
from django import template

register = template.Library()


@register.simple_tag(takes_context=True)
def signup_is_open(context) -> bool:
    request = context.get("request")
    return request is not None and get_adapter(request).is_open_for_signup(request)
