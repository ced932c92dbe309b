"""OpenID Connect sign-in: django-allauth's provider, with two gaps closed.

allauth skips the ID token's signature check when the token came straight from the token
endpoint, which OpenID Connect Core (3.1.3.7) allows only over TLS; an issuer on an
internal network is often plain HTTP, so the signature is always checked here. And an
issuer that cannot be reached (discovery fails) became a 500: here it is allauth's
sign-in error page, like every other failure of the round trip. The routes are allauth's
own (panel/urls.py puts these views in front of its include).
"""

from allauth.account.internal.decorators import login_not_required
from allauth.socialaccount.helpers import render_authentication_error
from allauth.socialaccount.internal import jwtkit
from allauth.socialaccount.models import SocialApp
from allauth.socialaccount.providers.oauth2.views import OAuth2CallbackView, OAuth2LoginView
from allauth.socialaccount.providers.openid_connect.views import OpenIDConnectOAuth2Adapter
from django.http import Http404
from requests import RequestException


class SignatureCheckingAdapter(OpenIDConnectOAuth2Adapter):
    """allauth's OpenID Connect adapter that verifies the ID token's signature too."""

    def _decode_id_token(self, app: SocialApp, id_token: str) -> dict:
        return jwtkit.verify_and_decode(
            credential=id_token,
            keys_url=self.openid_config["jwks_uri"],
            issuer=self.openid_config["issuer"],
            audience=app.client_id,
            lookup_kid=jwtkit.lookup_kid_jwk,
            verify_signature=True,
        )


def _run(view_class, request, provider_id):
    adapter = SignatureCheckingAdapter(request, provider_id)
    try:
        return view_class.adapter_view(adapter)(request)
    except SocialApp.DoesNotExist as exc:
        raise Http404 from exc
    except RequestException as exc:
        # The issuer's discovery document could not be fetched.
        return render_authentication_error(request, adapter.get_provider(), exception=exc)


@login_not_required
def login(request, provider_id):
    return _run(OAuth2LoginView, request, provider_id)


@login_not_required
def callback(request, provider_id):
    return _run(OAuth2CallbackView, request, provider_id)
