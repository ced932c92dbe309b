from rest_framework.routers import SimpleRouter

from .views import MemberViewSet, OrganisationViewSet

router = SimpleRouter(trailing_slash=False)
router.register("orgs", OrganisationViewSet, basename="organisation")
router.register(r"orgs/(?P<org_slug>[-a-zA-Z0-9_]+)/members", MemberViewSet, basename="member")

urlpatterns = router.urls
