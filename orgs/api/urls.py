from rest_framework.routers import SimpleRouter

from .views import SLUG_PATTERN, MemberViewSet, OrganisationViewSet

router = SimpleRouter(trailing_slash=False)
router.register("orgs", OrganisationViewSet, basename="organisation")
router.register(rf"orgs/(?P<org_slug>{SLUG_PATTERN})/members", MemberViewSet, basename="member")

urlpatterns = router.urls
