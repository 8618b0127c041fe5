"""Typed errors for bad input.

Every error that a bad catalog row or a bad HTTP upload can cause is an ``InvalidInputError``
with a short machine-readable ``code``. A row that fails becomes a :class:`Failure` (stage,
code, message as separate fields), which batch jobs write into the manifest and carry on;
the HTTP layer maps the class to a status through its one table. Nothing parses an error
string back. Nothing here imports torch, so the checks run before any tensor is built.
"""

from __future__ import annotations

from dataclasses import dataclass


class BackdropError(Exception):
    """Base class of every error raised on purpose by backdrop."""

    code = "error"

    @property
    def message(self) -> str:
        """The readable message alone (``str()`` of an input error also names its code)."""
        return self.__dict__.get("_message") or Exception.__str__(self)

    @message.setter
    def message(self, value: str) -> None:  # subclasses that build their own message
        self._message = value


class RegistryError(BackdropError):
    """A model reference that cannot be resolved, or a refused promotion."""

    code = "unknown_model"


class RegistryUnavailableError(RegistryError):
    """The registry could not answer (unreachable, refused, erroring): says nothing about whether
    the model exists, so callers must not treat it as "not found". Its message is generic; the
    registry's own words (URLs, exceptions) are in ``detail``, for the log only."""

    code = "registry_unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__("the model registry is unavailable; retry later")
        self.detail = detail


class InvalidInputError(BackdropError, ValueError):
    """An input (image, mask, category, parameter) that cannot be used as given."""

    code = "invalid_input"

    def __str__(self) -> str:  # "code: message", the form the manifest stores
        return f"{self.code}: {super().__str__()}"


class CorruptImageError(InvalidInputError):
    """The bytes are not a decodable image."""

    code = "corrupt_image"


class UnsupportedImageError(InvalidInputError):
    """A decodable image in a mode or format we do not accept."""

    code = "unsupported_image"


class ImageTooLargeError(InvalidInputError):
    """Over the pixel or byte limit (also guards against decompression bombs)."""

    code = "image_too_large"


class MissingMaskError(InvalidInputError):
    """No mask was given and the image has no alpha channel to use instead."""

    code = "missing_mask"


class MaskSizeError(InvalidInputError):
    """The mask's size differs from its image's size."""

    code = "mask_size_mismatch"


class RequestTooLargeError(InvalidInputError):
    """A request whose work (output megapixels x candidates x steps) is over the limit."""

    code = "request_too_large"


class EmptyMaskError(InvalidInputError):
    """The mask selects no product pixel: there is nothing to keep."""

    code = "empty_mask"


class FullMaskError(InvalidInputError):
    """The mask selects every pixel: there is no background to generate."""

    code = "full_mask"


class UnknownCategoryError(InvalidInputError):
    """The category is not in the model's category map."""

    code = "unknown_category"


class InvalidParameterError(InvalidInputError):
    """A generation parameter (steps, guidance, size, ...) is out of range."""

    code = "invalid_parameter"


class NoScorerError(InvalidParameterError):
    """Best-of-N was asked of a model that has no QA scorer saved with it (``qa/scorer.json``):
    a client error on HTTP (422), a refused run in the batch jobs, both before any generation."""

    code = "no_qa_scorer"

    HOW_TO_FIT = "fit one with: backdrop qa-fit --model MODEL_DIR --catalog TRAIN.parquet"


class FetchError(InvalidInputError):
    """An input URI could not be read (missing file, missing object, permission)."""

    code = "fetch_error"


class InputOutOfScopeError(FetchError):
    """A catalog row names an input outside the job's input scope (:class:`backdrop.scope.InputScope`)."""

    code = "input_out_of_scope"


class UnknownStyleError(InvalidInputError):
    """A brand style (kit) name, version or alias that the registry does not hold."""

    code = "unknown_style"


class StyleNotAllowedError(InvalidInputError):
    """A brand style this caller may not use (the service's per-key kit scopes)."""

    code = "style_not_allowed"


class OutputBusyError(BackdropError):
    """Another live run holds the output's lease (one writer per output)."""

    code = "output_busy"


class LeaseLostError(BackdropError):
    """This run's lease on its output expired or was taken over: it must not write the manifest."""

    code = "lease_lost"


# The stages a row goes through; a failure names the one that failed it. ``select``: the
# planner refused the row itself (a duplicate or missing product_id) before any fetch; ``qa``:
# scoring a candidate (best-of-N, review flags) failed.
SELECT, LOAD, GENERATE, QA, WRITE = "select", "load", "generate", "qa", "write"
STAGES = (SELECT, LOAD, GENERATE, QA, WRITE)
UNEXPECTED = {SELECT: "select_error", LOAD: "load_error", GENERATE: "generation_error", QA: "qa_error",
              WRITE: "write_error"}
DUPLICATE_ID, MISSING_ID = "duplicate_product_id", "missing_product_id"


@dataclass(frozen=True)
class Failure:
    """Why one row (or one HTTP request's image) has no output: data, not an exception string."""

    stage: str  # one of STAGES
    code: str  # an ``InvalidInputError.code``, or the stage's ``UNEXPECTED`` code
    message: str

    @classmethod
    def of(cls, stage: str, error: BaseException) -> "Failure":
        """A typed error keeps its code; anything else is this stage's unexpected error."""
        if isinstance(error, BackdropError) and error.code != BackdropError.code:
            return cls(stage, error.code, error.message)
        return cls(stage, UNEXPECTED[stage], f"{type(error).__name__}: {error}")

    @property
    def line(self) -> str:
        """The readable one-line form the manifest's ``error`` column keeps."""
        return f"{self.code}: {self.message}"
