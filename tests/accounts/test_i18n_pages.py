"""Issue 18, i18n: django-allauth's pages in Vietnamese.

django-allauth 65.22 ships no Vietnamese catalogue; locale/vendor/vi carries the msgids its
templates, forms, flash messages and mails use on the pages we render. Each page is opened
the way a person reaches it, under Vietnamese (the language cookie or Accept-Language), and
checked twice: it shows Vietnamese and none of its English, and no text looked up while
rendering it (template, form, message, mail) was missing from the Vietnamese catalogues
(the ``untranslated`` fixture, tests/conftest.py).
"""

import re

import pytest
from allauth.mfa.models import Authenticator
from allauth.socialaccount.models import SocialApp
from django.conf import settings
from django.contrib.sites.models import Site
from django.core import mail
from django.core.cache import cache
from django.test import Client

from accounts.services import user_email_vouch
from panel.models import SiteSettings
from tests.accounts.allauth_helpers import PASSWORD, fresh_totp, link_in_last_mail, sign_in

pytestmark = pytest.mark.django_db

VI = {"HTTP_ACCEPT_LANGUAGE": "vi"}
CHALLENGE = "/accounts/2fa/authenticate/"


@pytest.fixture(autouse=True)
def fresh_caches():
    """allauth's rate limits and used TOTP codes live in the cache."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def client(client):
    """A browser that chose Vietnamese with the language selector (the cookie)."""
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "vi"
    return client


@pytest.fixture
def alice(alice):
    user_email_vouch(user=alice)
    return alice


@pytest.fixture
def signed_in(client, alice):
    assert sign_in(client, "alice").status_code == 302
    return client


def text(response) -> str:
    """The page's visible words: its HTML without tags, scripts and styles."""
    html = response.content.decode()
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def check(response, *, vietnamese: list[str], english: list[str], status: int = 200) -> None:
    assert response.status_code == status, response.content.decode()[:2000]
    assert '<html lang="vi">' in response.content.decode()
    words = text(response)
    for phrase in vietnamese:
        assert phrase in words, phrase
    for phrase in english:
        assert phrase not in words, phrase


# --- Sign-in, sign-up, sign-out -------------------------------------------------------------


def test_the_sign_in_page_and_its_refusal_are_in_vietnamese(client, alice, untranslated):
    page = client.get("/accounts/login/")
    check(page, vietnamese=["Quên mật khẩu?", "Đăng nhập"], english=["Sign in", "Forgot password?"])
    refused = client.post("/accounts/login/", {"login": "alice", "password": "wrong"})
    check(refused, vietnamese=["mật khẩu bạn nhập không đúng"], english=["not correct", "Sign in"])
    assert untranslated == []


def test_the_sign_in_pages_sso_part_is_in_vietnamese(client, untranslated):
    app = SocialApp.objects.create(
        provider="openid_connect",
        provider_id="company-idp",
        name="Company IdP",
        client_id="switchboard",
        settings={"server_url": "https://idp.example.com"},
    )
    app.sites.add(Site.objects.get_current())
    page = client.get("/accounts/login/")
    check(page, vietnamese=["Hoặc dùng dịch vụ bên ngoài"], english=["Or use a third-party"])
    assert "Company IdP" in page.content.decode()
    assert untranslated == []


def test_closed_sign_up_is_in_vietnamese_to_a_vietnamese_browser(untranslated):
    page = Client().get("/accounts/signup/", **VI)  # Accept-Language only, no cookie
    check(
        page, vietnamese=["Đã đóng đăng ký", "Rất tiếc"], english=["Sign Up Closed", "We are sorry"]
    )
    assert untranslated == []


NEW = {
    "email": "dana@example.com",
    "username": "dana",
    "password1": "a long passphrase 42",
    "password2": "a long passphrase 42",
}


def test_sign_up_its_refusals_its_mail_and_the_verification_page_are_in_vietnamese(
    client, alice, untranslated
):
    SiteSettings.objects.update_or_create(pk=1, defaults={"allow_signup": True})
    page = client.get("/accounts/signup/")
    check(
        page, vietnamese=["Đã có tài khoản?", "Tên người dùng"], english=["Sign Up", "Already have"]
    )
    refused = client.post(
        "/accounts/signup/",
        {**NEW, "email": "alice@example.com", "username": "alice", "password2": "other"},
    )
    check(
        refused, vietnamese=["cùng một mật khẩu"], english=["already", "same password", "Sign Up"]
    )
    too_easy = client.post("/accounts/signup/", {**NEW, "password1": "123", "password2": "123"})
    check(too_easy, vietnamese=["quá ngắn", "ít nhất 8 ký tự"], english=["too short", "too common"])
    sent = client.post("/accounts/signup/", NEW, follow=True)
    check(
        sent,
        vietnamese=["Xác nhận địa chỉ e-mail"],
        english=["Confirm your e-mail", "must be confirmed"],
    )
    assert mail.outbox[-1].to == ["dana@example.com"]
    assert "Vui lòng xác nhận địa chỉ e-mail của bạn" in mail.outbox[-1].subject
    assert "Bạn nhận được thư này vì người dùng dana" in mail.outbox[-1].body
    confirm = client.get(link_in_last_mail("dana@example.com"))
    check(
        confirm,
        vietnamese=["Vui lòng xác nhận rằng"],
        english=["Confirm Email Address", "Please confirm"],
    )
    assert untranslated == []


def test_signing_out_is_in_vietnamese(signed_in, untranslated):
    page = signed_in.get("/accounts/logout/")
    check(
        page, vietnamese=["Bạn có chắc muốn đăng xuất không?"], english=["Sign Out", "Are you sure"]
    )
    out = signed_in.post("/accounts/logout/", follow=True)
    check(out, vietnamese=["Bạn đã đăng xuất."], english=["You have signed out"])
    assert untranslated == []


# --- Password reset and change --------------------------------------------------------------


def test_password_reset_its_pages_and_its_mail_are_in_vietnamese(client, alice, untranslated):
    page = client.get("/accounts/password/reset/")
    check(
        page,
        vietnamese=["Đặt lại mật khẩu", "Quên mật khẩu?"],
        english=["Password Reset", "Forgotten your"],
    )
    invalid = client.post("/accounts/password/reset/", {"email": "not an address"})
    check(
        invalid,
        vietnamese=["Đặt lại mật khẩu của tôi"],
        english=["valid email", "Reset My Password"],
    )
    done = client.post("/accounts/password/reset/", {"email": "alice@example.com"}, follow=True)
    check(
        done, vietnamese=["thư mục thư rác"], english=["We have sent you an email", "spam folder"]
    )
    assert "Thư đặt lại mật khẩu" in mail.outbox[-1].subject
    assert "yêu cầu đặt lại mật khẩu" in mail.outbox[-1].body
    opened = client.get(link_in_last_mail("alice@example.com"), follow=True)
    check(
        opened,
        vietnamese=["Đổi mật khẩu", "Mật khẩu mới"],
        english=["Change Password", "New Password"],
    )
    form_url = opened.redirect_chain[-1][0]
    mismatch = client.post(form_url, {"password1": "a new phrase 1", "password2": "other"})
    check(mismatch, vietnamese=["cùng một mật khẩu"], english=["same password", "Change Password"])
    changed = client.post(
        form_url, {"password1": "a new phrase 1", "password2": "a new phrase 1"}, follow=True
    )
    check(
        changed,
        vietnamese=["Mật khẩu của bạn đã được đổi."],
        english=["Your password is now changed"],
    )
    bad = client.get("/accounts/password/reset/key/0-bad-token/")
    check(bad, vietnamese=["Liên kết không hợp lệ"], english=["Bad Token", "was invalid"])
    assert untranslated == []


def test_changing_the_password_is_in_vietnamese(signed_in, untranslated):
    page = signed_in.get("/accounts/password/change/")
    check(page, vietnamese=["Mật khẩu hiện tại"], english=["Change Password", "Current Password"])
    wrong = signed_in.post(
        "/accounts/password/change/",
        {"oldpassword": "wrong", "password1": "a new phrase 1", "password2": "a new phrase 1"},
    )
    check(wrong, vietnamese=["Vui lòng nhập mật khẩu hiện tại"], english=["current password"])
    changed = signed_in.post(
        "/accounts/password/change/",
        {"oldpassword": PASSWORD, "password1": "a new phrase 1", "password2": "a new phrase 1"},
        follow=True,
    )
    check(
        changed,
        vietnamese=["Đã đổi mật khẩu thành công."],
        english=["Password successfully changed"],
    )
    assert untranslated == []


# --- E-mail addresses -----------------------------------------------------------------------


def test_the_email_page_and_its_messages_are_in_vietnamese(signed_in, untranslated):
    page = signed_in.get("/accounts/email/")
    check(
        page,
        vietnamese=["Thêm địa chỉ e-mail", "Đã xác minh"],
        english=["Email Addresses", "Add Email", "Verified", "Primary"],
    )
    invalid = signed_in.post("/accounts/email/", {"action_add": "", "email": "nope"})
    check(invalid, vietnamese=["Thêm e-mail"], english=["valid email", "Add Email"])
    added = signed_in.post(
        "/accounts/email/", {"action_add": "", "email": "alice2@example.com"}, follow=True
    )
    check(
        added,
        vietnamese=["Đã gửi thư xác nhận tới alice2@example.com", "Chưa xác minh"],
        english=["Confirmation email sent", "Unverified"],
    )
    primary = signed_in.post(
        "/accounts/email/", {"action_primary": "", "email": "alice2@example.com"}, follow=True
    )
    check(primary, vietnamese=["phải được xác minh"], english=["must be verified"])
    removed = signed_in.post(
        "/accounts/email/", {"action_remove": "", "email": "alice2@example.com"}, follow=True
    )
    check(
        removed, vietnamese=["Đã gỡ địa chỉ e-mail alice2@example.com"], english=["Removed email"]
    )
    assert untranslated == []


# --- Two-factor authentication --------------------------------------------------------------


def _activate(client) -> str:
    """Through the password check, the activation page, a wrong code, then the right one
    (allauth says "activated" once the transaction commits: the tests that call this
    commit theirs)."""
    asked = client.get("/accounts/2fa/totp/activate/", follow=True)
    check(
        asked,
        vietnamese=["Xác nhận quyền truy cập"],
        english=["Confirm Access", "Enter your password"],
    )
    reauth_url = asked.redirect_chain[-1][0]
    wrong = client.post(reauth_url, {"password": "wrong"})
    check(
        wrong, vietnamese=["Mật khẩu không đúng."], english=["Incorrect password", "Confirm Access"]
    )
    page = client.post(reauth_url, {"password": PASSWORD}, follow=True)
    check(
        page,
        vietnamese=["Bật ứng dụng xác thực", "quét mã QR"],
        english=["Activate Authenticator", "scan the QR"],
    )
    secret = re.search(r'id="authenticator_secret"[^>]*value="([A-Z2-7]+)"', page.content.decode())
    wrong = client.post("/accounts/2fa/totp/activate/", {"code": "000000"})
    check(wrong, vietnamese=["Mã không đúng."], english=["Incorrect code", "Activate"])
    done = client.post(
        "/accounts/2fa/totp/activate/", {"code": fresh_totp(secret.group(1))}, follow=True
    )
    check(
        done,
        vietnamese=["Đã bật ứng dụng xác thực.", "Mã khôi phục"],
        english=["activated", "Recovery Codes"],
    )
    return secret.group(1)


@pytest.mark.django_db(transaction=True)
def test_activating_two_factor_and_its_recovery_codes_are_in_vietnamese(
    signed_in, alice, untranslated
):
    page = signed_in.get("/accounts/2fa/")
    check(page, vietnamese=["Chưa bật ứng dụng xác thực."], english=["Two-Factor", "Activate"])
    _activate(signed_in)
    assert Authenticator.objects.filter(user=alice, type=Authenticator.Type.TOTP).exists()
    index = signed_in.get("/accounts/2fa/")
    check(
        index,
        vietnamese=["Xác thực bằng ứng dụng xác thực đang bật."],
        english=["Authenticator App", "recovery codes available"],
    )
    codes = signed_in.get("/accounts/2fa/recovery-codes/")
    check(
        codes,
        vietnamese=["Mã chưa dùng", "Tải mã xuống"],
        english=["Recovery Codes", "Unused codes", "Download codes"],
    )
    generate = signed_in.get("/accounts/2fa/recovery-codes/generate/")
    check(
        generate,
        vietnamese=["Bạn sắp tạo một bộ mã khôi phục mới"],
        english=["generate a new set", "Are you sure?"],
    )
    generated = signed_in.post("/accounts/2fa/recovery-codes/generate/", follow=True)
    check(
        generated,
        vietnamese=["Đã tạo một bộ mã khôi phục mới."],
        english=["has been generated", "Unused codes"],
    )
    deactivate = signed_in.get("/accounts/2fa/totp/deactivate/")
    check(
        deactivate,
        vietnamese=["Tắt ứng dụng xác thực"],
        english=["Deactivate Authenticator", "Are you sure"],
    )
    assert untranslated == []


@pytest.mark.django_db(transaction=True)
def test_the_two_factor_challenge_and_code_reauthentication_are_in_vietnamese(
    signed_in, alice, untranslated
):
    secret = _activate(signed_in)
    signed_in.post("/accounts/logout/")
    assert sign_in(signed_in, "alice")["Location"] == CHALLENGE
    page = signed_in.get(CHALLENGE)
    check(
        page,
        vietnamese=["Xác thực hai lớp", "Vui lòng nhập mã"],
        english=["Two-Factor", "authenticator code"],
    )
    wrong = signed_in.post(CHALLENGE, {"code": "000000"})
    check(wrong, vietnamese=["Mã không đúng."], english=["Incorrect code", "Sign In"])
    assert signed_in.post(CHALLENGE, {"code": fresh_totp(secret)}).status_code == 302
    asked = signed_in.get("/accounts/reauthenticate/", follow=True)
    check(
        asked,
        vietnamese=["Nhập mật khẩu của bạn:"],
        english=["Confirm Access", "Enter your password"],
    )
    by_code = signed_in.get("/accounts/2fa/reauthenticate/")
    check(
        by_code,
        vietnamese=["Nhập mã từ ứng dụng xác thực:"],
        english=["Confirm Access", "Enter an authenticator"],
    )
    assert untranslated == []
