"""Weekday and month names, and which vocabulary tokens name them (shared by the label finder,
`labels`, and the cluster finder, `clusters`)."""

from __future__ import annotations

from typing import Any


def _clean_token(s: str) -> str:
    return s.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\\n")


WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
MONTHS = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
_ABBREV = {
    "monday": ["Mon"],
    "tuesday": ["Tue", "Tues"],
    "wednesday": ["Wed"],
    "thursday": ["Thu", "Thur", "Thurs"],
    "friday": ["Fri"],
    "saturday": ["Sat"],
    "sunday": ["Sun"],
    "january": ["Jan"],
    "february": ["Feb"],
    "march": [],
    "april": ["Apr"],
    "may": [],
    "june": ["Jun"],
    "july": ["Jul"],
    "august": ["Aug"],
    "september": ["Sep", "Sept"],
    "october": ["Oct"],
    "november": ["Nov"],
    "december": ["Dec"],
}
CYCLIC_FAMILIES = {"weekdays": WEEKDAYS, "months": MONTHS}


#: members whose lower-case name is mostly another word ("may" the modal, "march" the verb)
AMBIGUOUS_UNCASED = {"may", "march"}


def _matches(token: str, member: str, cased: bool = True) -> bool:
    """Capitalised, as English writes day and month names: lower-case "may" and "march" are
    the verb and the modal, not the months. An uncased vocabulary (BERT uncased: every token
    lower case) cannot tell them apart, so there only the unambiguous full names count (no
    "may", "march", nor abbreviations such as "sun", "sat", "wed")."""
    t = token.strip().strip(".,;:!?'\"")
    if not cased:
        return member not in AMBIGUOUS_UNCASED and t.lower() in (member, member + "s")
    if t[:1].isupper() and t.lower() in (member, member + "s", member + "'s"):
        return True
    return t in _ABBREV.get(member, [])


def is_cased(tokenizer: Any) -> bool:
    """False for a tokenizer that lower-cases its input (BERT uncased, e.g. MiniLM)."""
    return not bool(getattr(tokenizer, "do_lower_case", False))
