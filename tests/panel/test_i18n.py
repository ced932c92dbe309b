"""Issue 18, i18n: the chat, account and sign-in pages in English (default) or Vietnamese."""

import ast
import gettext
import re
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client
from django.utils import translation

from ai.consumers import plain_words, scope_language
from panel.errors import InsufficientQuota, RateLimited
from tests.ai.conftest import world  # noqa: F401

LOCALE = Path(settings.BASE_DIR) / "locale" / "vi" / "LC_MESSAGES"
VI = {"HTTP_ACCEPT_LANGUAGE": "vi"}


@pytest.fixture
def as_alice(client, alice):
    client.force_login(alice)
    return client


def test_the_chat_page_is_english_by_default(as_alice):
    page = as_alice.get("/chat/").content.decode()
    assert "+ New chat" in page and "Keyboard shortcuts" in page and "Sign out" in page
    assert "Trò chuyện mới" not in page


def test_the_chat_page_speaks_vietnamese_to_a_vietnamese_browser(as_alice):
    page = as_alice.get("/chat/", **VI).content.decode()
    assert '<html lang="vi">' in page
    assert "+ Trò chuyện mới" in page and "Phím tắt" in page and "Đăng xuất" in page
    assert "+ New chat" not in page
    # The JS catalog comes before chat.js, which reads its words through gettext().
    assert page.index('src="/jsi18n/"') < page.index("chat/chat.js")


def test_an_account_page_speaks_vietnamese(as_alice):
    page = as_alice.get("/accounts/keys/", **VI).content.decode()
    assert "Khóa của tôi" in page and "Tạo khóa" in page and "Tổ chức" in page
    assert "Mô hình được phép" in page and "Không có (cá nhân)" in page
    assert "My keys" not in page


def test_the_sign_in_page_speaks_vietnamese(client, db):
    page = client.get("/accounts/login/", **VI).content.decode()
    assert "Quên mật khẩu?" in page and "Mật khẩu" in page and "Đăng nhập" in page
    english = client.get("/accounts/login/").content.decode()
    assert "Forgot password?" in english and "Quên mật khẩu?" not in english


def test_the_selector_switches_the_language_and_it_sticks(as_alice):
    page = as_alice.get("/accounts/keys/").content.decode()
    assert 'action="/i18n/setlang/"' in page and 'value="vi"' in page
    answer = as_alice.post("/i18n/setlang/", {"language": "vi", "next": "/accounts/keys/"})
    assert answer.status_code == 302 and answer["Location"] == "/accounts/keys/"
    assert as_alice.cookies[settings.LANGUAGE_COOKIE_NAME].value == "vi"
    assert "Khóa của tôi" in as_alice.get("/accounts/keys/").content.decode()
    assert "+ Trò chuyện mới" in as_alice.get("/chat/").content.decode()
    as_alice.post("/i18n/setlang/", {"language": "en", "next": "/chat/"})
    assert "+ New chat" in as_alice.get("/chat/", **VI).content.decode()


def test_the_javascript_catalog_carries_the_vietnamese_words(client, db):
    catalog = client.get("/jsi18n/", **VI)
    assert catalog.status_code == 200
    body = catalog.content.decode()
    assert "Sao ch\\u00e9p" in body or "Sao chép" in body
    english = client.get("/jsi18n/").content.decode()
    assert "django.gettext" in english
    assert "Sao ch" not in english


def test_the_consumer_words_refusals_in_the_page_language():
    error = RateLimited("x", headers={"Retry-After": "12"})
    with translation.override("vi"):
        assert plain_words(error) == (
            "Bạn đã dùng hết hạn mức cho mô hình này. Hạn mức được đặt lại sau 12 giây."
        )
        assert plain_words(InsufficientQuota("x")).startswith("Số dư của bạn không đủ")
    with translation.override("en"):
        assert plain_words(InsufficientQuota("x")).startswith("Your balance is too low")


@pytest.mark.parametrize(
    ("headers", "language"),
    [
        ([(b"accept-language", b"vi-VN,vi;q=0.9,en;q=0.5")], "vi"),
        ([(b"accept-language", b"fr, en;q=0.5")], "en"),
        ([(b"cookie", b"a=b; django_language=vi"), (b"accept-language", b"en")], "vi"),
        ([(b"cookie", b"django_language=xx")], settings.LANGUAGE_CODE),
        ([], settings.LANGUAGE_CODE),
    ],
)
def test_the_consumer_reads_the_language_as_the_page_does(headers, language):
    assert scope_language({"headers": headers}) == language


def _po_catalog(path: Path) -> tuple[dict, list[str]]:
    """A .po file read as gettext reads its compiled .mo (without polib or msgfmt): the
    translations keyed as in GNUTranslations._catalog ("context\x04msgid", a plural's form
    as (msgid, n)), and the msgids left fuzzy or untranslated, which msgfmt leaves out."""
    catalog, untranslated = {}, []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        fields, field = {}, None
        for line in block.splitlines():
            if line.startswith('"') and field:
                fields[field] += ast.literal_eval(line)
            elif not line.startswith("#") and line.strip():
                field, quoted = line.split(" ", 1)
                fields[field] = ast.literal_eval(quoted)
        if not fields.get("msgid"):
            continue  # the header, or only comments (obsolete entries)
        key = fields["msgid"]
        if "msgctxt" in fields:
            key = f"{fields['msgctxt']}\x04{key}"
        strs = {k: v for k, v in fields.items() if k.startswith("msgstr")}
        if "#, fuzzy" in block or ", fuzzy" in block or not all(strs.values()):
            untranslated.append(key)
        elif "msgid_plural" in fields:
            catalog.update({(key, int(k[7:-1])): v for k, v in strs.items()})
        else:
            catalog[key] = strs["msgstr"]
    return catalog, untranslated


CATALOGUES = [
    LOCALE / "django.po",
    LOCALE / "djangojs.po",
    # Hand-kept Vietnamese for the third-party msgids our pages show (django-allauth's).
    Path(settings.BASE_DIR) / "locale" / "vendor" / "vi" / "LC_MESSAGES" / "django.po",
]


@pytest.mark.parametrize("po", CATALOGUES, ids=lambda p: str(p.relative_to(settings.BASE_DIR)))
def test_every_vietnamese_entry_is_translated_and_compiled(po):
    assert str(po.parent) in {str(Path(p) / "vi" / "LC_MESSAGES") for p in settings.LOCALE_PATHS}
    catalog, untranslated = _po_catalog(po)
    assert len(catalog) > 10
    assert untranslated == []
    # The committed .mo is the .po compiled: the same entries, the same translations.
    with po.with_suffix(".mo").open("rb") as mo:
        compiled = gettext.GNUTranslations(mo)._catalog
    assert {key: text for key, text in compiled.items() if key != ""} == catalog


@pytest.mark.django_db(transaction=True)
async def test_the_chat_socket_refuses_in_the_language_the_page_was_shown_in(world, alice):  # noqa: F811
    from asgiref.sync import sync_to_async
    from channels.testing import WebsocketCommunicator

    from panel.asgi import application
    from panel.models import SiteSettings

    def cookie() -> bytes:
        client = Client()
        client.force_login(alice)
        client.post("/i18n/setlang/", {"language": "vi", "next": "/chat/"})
        return "; ".join(f"{k}={v.value}" for k, v in client.cookies.items()).encode()

    await SiteSettings.objects.aupdate_or_create(pk=1, defaults={"is_ai_enabled": False})
    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
    headers.append((b"cookie", await sync_to_async(cookie)()))
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_json_to({"type": "send", "model_id": world.chat.id, "content": "hi"})
    reply = await communicator.receive_json_from(timeout=5)
    assert reply == {"type": "error", "message": "Quản trị viên đã tắt trò chuyện AI."}
    await communicator.disconnect()


def test_allauths_own_pages_render_in_vietnamese(client, db):
    # django-allauth 65.22 ships no Vietnamese: locale/vendor/ carries its msgids
    # (tests/accounts/test_i18n_pages.py opens each of its pages).
    page = client.get("/accounts/password/reset/", **VI)
    assert page.status_code == 200
    body = page.content.decode()
    assert '<html lang="vi">' in body and "Đặt lại mật khẩu" in body
    assert "Password Reset" not in body
    assert "Password Reset" in client.get("/accounts/password/reset/").content.decode()


# --- Python-side labels: choices, form labels, service refusals, chart series -------------


@pytest.fixture
def acme_with_wallet(acme, alice):
    from orgs.services import wallet_adjust, wallet_for, wallet_topup

    wallet_topup(wallet=wallet_for(organisation=acme), amount=Decimal(5), reason="gift")
    wallet_adjust(wallet=wallet_for(organisation=acme), amount=Decimal(-1), reason="fix", by=alice)
    wallet_topup(wallet=wallet_for(user=alice), amount=Decimal(2), reason="own")
    return acme


def _cells(page: str, table: str) -> list[str]:
    body = re.search(rf'<table[^>]*id="{table}".*?</table>', page, re.S).group(0)
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td>(.*?)</td>", body)]


def test_the_organisation_page_names_roles_kinds_and_tier_in_vietnamese(as_alice, acme_with_wallet):
    page = as_alice.get("/accounts/orgs/acme/", **VI).content.decode()
    assert "Vai trò của bạn: Chủ sở hữu · hạng Miễn phí" in page
    role_options = re.findall(r'<option value="(\w+)"[^>]*>([^<]+)</option>', page)
    assert ("admin", "Quản trị viên") in role_options and ("member", "Thành viên") in role_options
    assert "Nạp tín dụng" in _cells(page, "ledger") and "Điều chỉnh" in _cells(page, "ledger")
    assert "Top-up" not in page and ">Owner<" not in page and ">Member<" not in page
    english = as_alice.get("/accounts/orgs/acme/").content.decode()
    assert "Your role: Owner · tier Free" in english and "Top-up" in _cells(english, "ledger")
    assert ("admin", "Admin") in re.findall(r'<option value="(\w+)"[^>]*>([^<]+)</option>', english)


def test_the_organisation_lists_and_the_member_page_name_roles_in_vietnamese(client, acme, bob):
    client.force_login(bob)
    assert "<td>Thành viên</td>" in client.get("/accounts/orgs/", **VI).content.decode()
    member = client.get("/accounts/orgs/acme/", **VI).content.decode()
    assert '<strong id="my-role">Thành viên</strong>' in member


def test_the_wallet_page_names_ledger_kinds_in_vietnamese(as_alice, acme_with_wallet):
    page = as_alice.get("/accounts/wallet/", **VI).content.decode()
    assert "<td>Nạp tín dụng</td>" in page
    assert "Top-up" not in page
    assert "<td>Top-up</td>" in as_alice.get("/accounts/wallet/").content.decode()


def test_the_new_key_form_offers_permissions_in_vietnamese(as_alice):
    page = as_alice.get("/accounts/keys/", **VI).content.decode()
    assert "Đọc (liệt kê mô hình, mức sử dụng)" in page and "Proxy (gọi mô hình)" in page
    assert "Read (list models, usage)" not in page
    past = as_alice.post(
        "/accounts/keys/",
        {"name": "k", "permissions": ["read"], "expires_at": "2000-01-01T00:00"},
        **VI,
    )
    assert (
        past.status_code == 400
        and "Phải là một thời điểm trong tương lai." in past.content.decode()
    )


def test_a_refusal_of_a_service_reads_in_vietnamese_on_the_page_and_in_english_in_the_api(
    client, acme, alice, bob
):
    from orgs.models import Membership, Role

    owner = Membership.objects.get(user=alice)
    Membership.objects.filter(user=bob).update(role=Role.ADMIN)
    client.force_login(bob)
    page = client.post(f"/accounts/orgs/acme/members/{owner.pk}/remove/", follow=True, **VI)
    assert "Chỉ chủ sở hữu mới có thể cấp, đổi hoặc gỡ vai trò chủ sở hữu." in page.content.decode()
    assert Membership.objects.filter(pk=owner.pk).exists()
    client.force_login(alice)
    changed = client.post(
        f"/accounts/orgs/acme/members/{owner.pk}/role/", {"role": "member"}, follow=True, **VI
    )
    assert "Một tổ chức phải luôn có ít nhất một chủ sở hữu." in changed.content.decode()
    assert Membership.objects.get(pk=owner.pk).role == Role.OWNER


def test_the_invitation_mail_stays_english_from_a_vietnamese_page(as_alice, acme):
    from django.core import mail

    as_alice.post(
        "/accounts/orgs/acme/invitations/new/", {"email": "d@example.com", "role": "admin"}, **VI
    )
    assert "on Switchboard as admin." in mail.outbox[-1].body


def test_translatable_choice_labels_need_no_migration(db):
    # Lazy labels equal to the old strings: makemigrations sees no change (it exits 1 if any).
    call_command("makemigrations", "accounts", "orgs", check=True, dry_run=True, verbosity=0)


def test_the_usage_charts_name_their_series_through_the_javascript_catalog(as_alice, client):
    page = as_alice.get("/accounts/usage/", **VI).content.decode()
    assert page.index('src="/jsi18n/"') < page.index("accounts/usage.js")
    script = (Path(settings.BASE_DIR) / "static" / "accounts" / "usage.js").read_text()
    assert 'gettext("requests")' in script and 'gettext("cost")' in script
    catalog = as_alice.get("/jsi18n/", **VI).content.decode()
    assert '"requests": "y\\u00eau c\\u1ea7u"' in catalog or '"requests": "yêu cầu"' in catalog


@pytest.mark.parametrize(
    "path",
    [
        "/chat/",
        "/accounts/",
        "/accounts/keys/",
        "/accounts/usage/",
        "/accounts/quota/",
        "/accounts/wallet/",
        "/accounts/orgs/",
        "/accounts/orgs/acme/",
    ],
)
def test_the_account_and_organisation_pages_look_up_no_untranslated_text(
    as_alice,
    acme_with_wallet,
    untranslated,
    path,
):
    page = as_alice.get(path, **VI)
    assert page.status_code == 200 and '<html lang="vi">' in page.content.decode()
    assert untranslated == []
