"""What every write serializer of the management API shares: strict input.

A field the serializer does not take is refused (400 naming it), never dropped: a
client that sends ``permission_mode`` where it is not supported must learn so,
not get a key it did not ask for.
"""

from rest_framework import serializers


class StrictIntegerField(serializers.IntegerField):
    """An integer given as a JSON number: no strings, booleans or floats."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    """A number given as a JSON number (an integer is taken): no strings or booleans."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


class KnownFieldsOnly:
    """Refuses input fields the serializer does not take, naming them.

    Read-only fields are accepted (and not written): they are the resource's own
    output, which a script may send back as it got it (GET, change one field, PUT).
    """

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(str(name) for name in data if name not in self.fields)
            if unknown:
                message = (
                    "Unknown field."
                    if len(unknown) == 1
                    else f"Unknown fields: {', '.join(unknown)}."
                )
                raise serializers.ValidationError({unknown[0]: message})
        return super().to_internal_value(data)
