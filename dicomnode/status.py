"""The DIMSE status vocabulary: every status code Dolmen sends or reads, defined once.

PS3.7 Annex C gives the general statuses, PS3.4 each service's own (B.2.3 Storage, C.4.1.1.4
C-FIND, C.4.2.1.5 C-MOVE, C.4.3.1.4 C-GET); STOW-RS answers with the same codes as Failure
Reason (PS3.18 Table I.2-2). One code can carry two names in the standard, by service (0xA900
is *Data Set does not match SOP Class* in a C-STORE and *Identifier does not match SOP Class*
in a query); it has one constant here, named after what it means in both.

:func:`meaning` and :func:`error_code` turn a failure status into words for the user and into
the stable snake_case ``code`` of :class:`~dicomnode.errors.RemoteError`.
"""

from __future__ import annotations

SUCCESS = 0x0000
#: (0000,0900) Status 0x0110 *Processing failure* (PS3.7 C.4): the index failed, say.
PROCESSING_FAILURE = 0x0110
INVALID_OBJECT_INSTANCE = 0x0117
SOP_CLASS_NOT_SUPPORTED = 0x0122
#: *Refused: Not Authorized*: access control said no.
NOT_AUTHORIZED = 0x0124
DUPLICATE_INVOCATION = 0x0210
UNRECOGNIZED_OPERATION = 0x0211
MISTYPED_ARGUMENT = 0x0212

#: *Refused: Out of Resources* (storage full, too many answers); 0xA700-0xA7FF all mean it.
OUT_OF_RESOURCES = 0xA700
#: C-FIND/C-MOVE/C-GET: *Out of Resources - unable to calculate number of matches*.
UNABLE_TO_COUNT_MATCHES = 0xA701
#: C-MOVE/C-GET: *Out of Resources - unable to perform sub-operations*.
UNABLE_TO_PERFORM_SUBOPS = 0xA702
#: C-MOVE: *Refused: Move Destination unknown*.
MOVE_DESTINATION_UNKNOWN = 0xA801
#: C-STORE *Data Set does not match SOP Class*; a query's *Identifier does not match SOP Class*.
DOES_NOT_MATCH_SOP_CLASS = 0xA900
#: C-GET of frames: *None of the frames requested were found*.
NO_FRAMES_FOUND = 0xAA00
#: C-STORE *Cannot understand*; a query's or retrieve's *Unable to process* (0xC000-0xCFFF).
UNABLE_TO_PROCESS = 0xC000
#: STOW-RS Failure Reason: the instance belongs to another study than the request's URL.
STUDY_MISMATCH = 0xC409

#: C-MOVE/C-GET *Sub-operations complete - one or more failures or warnings*; C-STORE
#: *Coercion of data elements* shares the code.
SUBOPS_WARNING = 0xB000
#: C-STORE warnings (PS3.4 B.2.3): the instance is stored, perhaps changed.
STORE_WARNINGS = (0xB000, 0xB006, 0xB007)

#: *Matching/sub-operations terminated due to Cancel request*.
CANCEL = 0xFE00
#: *Pending*: matches or sub-operations are continuing.
PENDING = 0xFF00
#: *Pending - optional keys not supported as expected*.
PENDING_WARNING = 0xFF01
PENDING_STATUSES = (PENDING, PENDING_WARNING)


def is_out_of_resources(code: int) -> bool:
    return 0xA700 <= code <= 0xA7FF


def is_mismatch(code: int) -> bool:
    return 0xA900 <= code <= 0xA9FF


def is_unable_to_process(code: int) -> bool:
    return 0xC000 <= code <= 0xCFFF


def meaning(code: int, op: str) -> tuple[str, str]:
    """``(short meaning, what to do)`` of a failure status a peer answered to ``op``.

    ``op`` is ``store``, ``find``, ``move``, ``get`` or ``echo``: a few codes are named by
    service (PS3.4 and PS3.7 Annex C).
    """
    if code == MOVE_DESTINATION_UNKNOWN:
        return "Move destination unknown", ""
    if is_out_of_resources(code):
        what = {UNABLE_TO_COUNT_MATCHES: "cannot count the matches",
                UNABLE_TO_PERFORM_SUBOPS: "cannot perform the sub-operations"}.get(code, "")
        return (
            "Out of resources" + (f" ({what})" if what else ""),
            "The remote node is overloaded or its storage is full; try again later or ask its administrator.",
        )
    if is_mismatch(code):
        if op == "store":
            return "Data set does not match SOP class", "The remote node refuses this object as it is."
        return (
            "Identifier does not match SOP class",
            "The remote node does not accept this query; try fewer filters or another level.",
        )
    if NO_FRAMES_FOUND <= code <= 0xAAFF:
        return "None of the frames requested were found", ""
    if is_unable_to_process(code):
        if op == "store":
            return "Cannot understand", "The remote node could not parse or file the object; see its log."
        return "Unable to process", "The remote node failed on the request; its log says why."
    return {
        SOP_CLASS_NOT_SUPPORTED: ("SOP class not supported", "The remote node does not implement this service."),
        NOT_AUTHORIZED: (
            "Not authorized",
            "The remote node refuses this operation from our AE title; allow it there.",
        ),
        INVALID_OBJECT_INSTANCE: ("Invalid object instance", "The remote node refused the object."),
        DUPLICATE_INVOCATION: ("Duplicate invocation", ""),
        UNRECOGNIZED_OPERATION: ("Unrecognized operation", "The remote node does not implement this operation."),
        MISTYPED_ARGUMENT: ("Mistyped argument", ""),
        PROCESSING_FAILURE: ("Processing failure", "The remote node failed on the request; its log says why."),
        CANCEL: ("Cancelled", ""),
    }.get(code, ("Failed", ""))


_ERROR_CODES = {
    MOVE_DESTINATION_UNKNOWN: "move_destination_unknown",
    SOP_CLASS_NOT_SUPPORTED: "sop_class_not_supported",
    NOT_AUTHORIZED: "not_authorized",
    CANCEL: "cancelled",
    UNRECOGNIZED_OPERATION: "unrecognized_operation",
}


def error_code(code: int) -> str:
    """The stable snake_case code of a failure status."""
    if code in _ERROR_CODES:
        return _ERROR_CODES[code]
    if is_out_of_resources(code):
        return "out_of_resources"
    if is_mismatch(code):
        return "identifier_mismatch"
    if is_unable_to_process(code):
        return "unable_to_process"
    return "failed_status"
