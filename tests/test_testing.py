"""The shared test helpers themselves: a helper that cannot fail would make every test using it
vacuous."""
import pytest

from vidcore.testing import assert_raises_cleanly


def test_assert_raises_cleanly_accepts_a_python_exception():
    name, message = assert_raises_cleanly("int('x')", match="invalid literal")
    assert name == "ValueError" and "invalid literal" in message


def test_assert_raises_cleanly_rejects_a_call_that_returns():
    with pytest.raises(AssertionError, match="returned without raising"):
        assert_raises_cleanly("int('3')")


def test_assert_raises_cleanly_rejects_a_signal():
    with pytest.raises(AssertionError, match="killed the interpreter"):
        assert_raises_cleanly("__import__('os').abort()")


def test_assert_raises_cleanly_checks_the_message():
    with pytest.raises(AssertionError, match="expected a message containing"):
        assert_raises_cleanly("int('x')", match="something else")
