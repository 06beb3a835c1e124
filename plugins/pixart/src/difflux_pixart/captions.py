"""Caption preprocessing for T5-conditioned models (PixArt; DeepFloyd IF uses the same rules).

Without cleaning, a caption is lower-cased and stripped. ``clean_caption=True`` applies the web
caption cleaning the published models were trained with (from DeepFloyd IF's data pipeline):
URLs, HTML, handles, CJK blocks, ids, file names, shop phrases and stray punctuation are removed,
dashes and quotes normalised, mojibake fixed (``ftfy``). It needs the optional ``beautifulsoup4``
and ``ftfy`` packages (``pip install difflux-pixart[captions]``); when either is missing, a warning
says so and captions are only lower-cased.
"""

from __future__ import annotations

import html
import importlib.util
import logging
import re
import urllib.parse
from collections.abc import Sequence

__all__ = ["caption_cleaning_available", "clean_caption", "preprocess_captions"]

logger = logging.getLogger("difflux")

_URL_TAIL = r"[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@)"
_MEDIA = r"(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)"
_PUNCT = "#®•©™&@·º½¾¿¡§~)(][}{|\\/*"

# (pattern, replacement) applied in order before the HTML is parsed
_BEFORE_HTML: tuple[tuple[str, str], ...] = (
    ("<person>", "person"),
    (r"\b((?:https?:(?:\/{1,3}|[a-zA-Z0-9%])|" + _URL_TAIL + "))", ""),  # links with a scheme, or bare domains
    (r"\b((?:www:(?:\/{1,3}|[a-zA-Z0-9%])|" + _URL_TAIL + "))", ""),
)
# after the HTML text is taken: handles, CJK blocks, dashes, quotes, entities, ids, file names, punctuation
_AFTER_HTML: tuple[tuple[str, str], ...] = (
    (r"@[\w\d]+\b", ""),
    *((f"[{block}]+", "") for block in (
        "\u31c0-\u31ef", "\u31f0-\u31ff", "\u3200-\u32ff", "\u3300-\u33ff", "\u3400-\u4dbf", "\u4dc0-\u4dff",
        "\u4e00-\u9fff",
    )),
    ("[\u002d\u058a\u05be\u1400\u1806\u2010-\u2015\u2e17\u2e1a\u2e3a\u2e3b\u2e40\u301c\u3030\u30a0\ufe31\ufe32"
     "\ufe58\ufe63\uff0d]+", "-"),
    ("[`\u00b4\u00ab\u00bb\u201c\u201d\u00a8]", '"'),  # quote marks to "
    ("[\u2018\u2019]", "'"),  # curly apostrophes to '
    (r"&quot;?", ""),
    (r"&amp", ""),
    (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),  # IP addresses
    (r"\d:\d\d\s+$", ""),  # trailing article ids
    (r"\\n", " "),
    (r"#\d{1,3}\b", ""),
    (r"#\d{5,}\b", ""),
    (r"\b\d{6,}\b", ""),
    (r"[\S]+\." + _MEDIA, ""),  # file names
    (r"[\"\']{2,}", '"'),
    (r"[\.]{2,}", " "),
    ("[" + re.escape(_PUNCT) + "]{1,}", " "),
    (r"\s+\.\s+", " "),
)  # fmt: skip
# after ftfy and entity decoding: product codes, shop phrases, sizes, spacing, edge punctuation
_AFTER_FIX: tuple[tuple[str, str], ...] = (
    (r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),
    (r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),
    (r"\b\d+[a-zA-Z]+\d+\b", ""),
    (r"(worldwide\s+)?(free\s+)?shipping", ""),
    (r"(free\s)?download(\sfree)?", ""),
    (r"\bclick\b\s(?:for|on)\s\w+", ""),
    (r"\b" + _MEDIA + r"(\simage[s]?)?", ""),
    (r"\bpage\s+\d+\b", ""),
    (r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),
    ("\\b\\d+\\.?\\d*[x\u0445\u00d7]\\d+\\.?\\d*\\b", ""),  # 1920x1080 (Latin x, Cyrillic ha, times)
    (r"\b\s+\:\s+", ": "),
    (r"(\D[,\./])\b", r"\1 "),
    (r"\s+", " "),
    (r"^[\"\']([\w\W]+)[\"\']$", r"\1"),
    (r"^[\'\_,\-\:;]", ""),
    (r"[\'\_,\-\:\-\+]$", ""),
    (r"^\.\S+$", ""),
)
_SEPARATORS = re.compile(r"(?:\-|\_)")


def _apply(rules: Sequence[tuple[str, str]], text: str) -> str:
    for pattern, replacement in rules:
        text = re.sub(pattern, replacement, text)
    return text


def caption_cleaning_available() -> bool:
    """Whether ``beautifulsoup4`` and ``ftfy`` are installed (what ``clean_caption=True`` needs)."""
    return all(importlib.util.find_spec(name) is not None for name in ("bs4", "ftfy"))


def clean_caption(caption: str) -> str:
    """One caption cleaned as the published T5-conditioned models' training data was (see the module doc).

    :raises ImportError: when ``beautifulsoup4`` or ``ftfy`` is missing (``pip install difflux-pixart[captions]``).
    """
    try:
        import ftfy
        from bs4 import BeautifulSoup
    except ImportError as err:
        raise ImportError("clean_caption needs beautifulsoup4 and ftfy: pip install difflux-pixart[captions]") from err
    text = urllib.parse.unquote_plus(str(caption)).strip().lower()
    text = _apply(_BEFORE_HTML, text)
    text = BeautifulSoup(text, features="html.parser").text
    text = _apply(_AFTER_HTML, text)
    if len(_SEPARATORS.findall(text)) > 3:  # this-is-a-slug / this_is_a_slug
        text = _SEPARATORS.sub(" ", text)
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _apply(_AFTER_FIX, text).strip()


def preprocess_captions(captions: str | Sequence[str], clean: bool, pipeline: str = "PixArt") -> list[str]:
    """Captions as the text encoder gets them: cleaned twice when ``clean`` (and the packages are there),
    else lower-cased and stripped. Warns once per call when ``clean`` cannot be honoured."""
    if clean and not caption_cleaning_available():
        logger.warning(
            "%s: clean_caption=True needs beautifulsoup4 and ftfy (pip install difflux-pixart[captions]); "
            "captions are only lower-cased",
            pipeline,
        )
        clean = False
    texts = [captions] if isinstance(captions, str) else list(captions)
    if clean:
        return [clean_caption(clean_caption(t)) for t in texts]
    return [t.lower().strip() for t in texts]
