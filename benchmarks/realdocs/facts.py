"""Hand-checked questions on six public licenses (Debian's /usr/share/common-licenses); every answer
occurs verbatim in its source document. Writes qa/train.jsonl and qa/test.jsonl (held-out wordings) and
qa/docs_only.jsonl (facts that are only in the documents, never asked in training)."""

# ruff: noqa: E501  (one fact per line reads best)

import json
from pathlib import Path

FACTS = [
    # (source, answer, training question, held-out question)
    ("GPL-3", "29 June 2007", "On what date was version 3 of the GNU General Public License published?",
     "When is the GPL version 3 dated?"),
    ("GPL-3", "at least three years", "How long must a written offer for Corresponding Source stay valid under the GPLv3?",
     "For how long is the GPLv3 written offer to provide source code valid?"),
    ("GPL-3", "60 days", "Under the GPLv3, how long after you stop a violation must the copyright holder notify you to keep your license from being reinstated permanently?",
     "Within how many days after the cessation of a GPLv3 violation must a copyright holder give notice?"),
    ("GPL-3", "30 days", "Under the GPLv3, within how many days of receiving a first notice must you cure a violation?",
     "How long do you have to cure a first GPLv3 violation after the notice?"),
    ("GPL-3", "GNU Affero General Public License", "Which license does section 13 of the GPLv3 allow combining with?",
     "With works under which license may a GPLv3 covered work be linked according to section 13?"),
    ("GPL-3", "Free Software Foundation", "Who holds the copyright of the text of the GNU General Public License version 3?",
     "Which organisation is the copyright holder of the GPLv3 document?"),
    ("Apache-2.0", "January 2004", "When was the Apache License, Version 2.0 released?",
     "What month and year does the Apache License 2.0 carry?"),
    ("Apache-2.0", "NOTICE", "Which text file's attribution notices must be kept when redistributing under the Apache License 2.0?",
     "Under Apache 2.0, what is the name of the file with attribution notices that derivative works must include?"),
    ("Apache-2.0", "trademarks", "Besides trade names, what does the Apache License 2.0 not grant permission to use?",
     "What rights over marks does the Apache License 2.0 withhold?"),
    ("Apache-2.0", "Submission of Contributions", "What is section 5 of the Apache License 2.0 called?",
     "Which Apache 2.0 section covers contributions submitted to the Licensor?"),
    ("MPL-2.0", "Larger Work", "What does the Mozilla Public License 2.0 call a work that combines Covered Software with other material?",
     "Under MPL 2.0, what term names a combination of Covered Software with other files?"),
    ("MPL-2.0", "principal place of business", "Under the MPL 2.0, litigation may be brought in the courts of the jurisdiction of the defendant's what?",
     "Where must MPL 2.0 litigation be brought, relative to the defendant?"),
    ("MPL-2.0", "Exhibit A", "Which exhibit of the MPL 2.0 holds the source code form license notice?",
     "Where in the Mozilla Public License 2.0 is the notice to attach to source files?"),
    ("MPL-2.0", "Secondary License", "What does the MPL 2.0 call the GPL, LGPL and AGPL licenses?",
     "Under what name does MPL 2.0 group the GNU licenses it is compatible with?"),
    ("MPL-2.0", "60 days", "Under the MPL 2.0, how long after you become compliant must a Contributor notify you of non-compliance to end your rights?",
     "Within how many days after compliance can an MPL 2.0 Contributor still act on earlier non-compliance?"),
    ("GFDL-1.3", "3 November 2008", "On what date was version 1.3 of the GNU Free Documentation License published?",
     "When is the GFDL 1.3 dated?"),
    ("GFDL-1.3", "5 words", "How long may a Front-Cover Text be under the GFDL?",
     "What is the maximum length of a Front-Cover Text in the GNU Free Documentation License?"),
    ("GFDL-1.3", "25 words", "How long may a Back-Cover Text be under the GFDL?",
     "What is the longest Back-Cover Text the GFDL allows?"),
    ("GFDL-1.3", "more than 100", "How many printed copies of a Document trigger the GFDL's rules on copying in quantity?",
     "Above what number of copies does the GFDL's section on copying in quantity apply?"),
    ("GFDL-1.3", "Invariant Sections", "What does the GFDL call Secondary Sections whose titles are designated as unchangeable in the notice?",
     "Which sections of a GFDL document may not be modified?"),
    ("GFDL-1.3", "Opaque", "What does the GFDL call a copy that is not Transparent?",
     "What is the GFDL term for a non-Transparent copy?"),
    ("CC0-1.0", "NOT A LAW FIRM", "What does Creative Commons Corporation state it is not, at the top of CC0?",
     "According to the CC0 header, what kind of firm is Creative Commons not?"),
    ("Artistic", "Standard Version", "What does the Artistic License call the Package when it has not been modified?",
     "Under the Artistic License, what is an unmodified Package called?"),
    ("Artistic", "Copyright Holder", "Who is named in the copyright of the package, in the Artistic License's terms?",
     "What does the Artistic License call whoever is named in the package's copyrights?"),
]  # fmt: skip

DOCS_ONLY = [
    # (source, answer, question): no training question asks these facts
    ("Apache-2.0", "the date such litigation is filed", "Under the Apache License 2.0, from when do your patent licenses end if you sue someone claiming the Work infringes a patent?"),
    ("Apache-2.0", "Accepting Warranty or Additional Liability", "What is the title of section 9 of the Apache License 2.0?"),
    ("GFDL-1.3", "at least one year", "How long after the last Opaque copy is distributed must a GFDL Transparent copy stay accessible?"),
    ("GFDL-1.3", "August 1, 2009", "Until what date could the operator of an MMC site republish an eligible MMC under CC-BY-SA?"),
    ("GFDL-1.3", "November 1, 2008", "Before what date must works have been incorporated into an MMC for it to be eligible for relicensing under the GFDL?"),
    ("GFDL-1.3", "San Francisco", "In which city does Creative Commons Corporation have its principal place of business, according to the GFDL 1.3?"),
    ("GFDL-1.3", "Endorsements", "Which section must be deleted from a modified version under the GFDL?"),
    ("GPL-3", "entity transaction", "What does the GPLv3 call a transaction that transfers control of an organization?"),
    ("GPL-3", "Appropriate Legal Notices", "What must an interactive user interface display under the GPLv3?"),
    ("MPL-2.0", "Mozilla Foundation", "Who is the license steward of the MPL 2.0?"),
    ("CC0-1.0", "Public License Fallback", "What is section 3 of CC0 1.0 called?"),
    ("Artistic", "Freely Available", "What does the Artistic License call an item for which no fee is charged itself?"),
]  # fmt: skip


def rows(column: int) -> list[dict]:
    return [{"question": f[column], "answer": f[1], "source": f[0]} for f in FACTS]


if __name__ == "__main__":
    here = Path(__file__).parent
    docs = {p.stem: p.read_text(encoding="utf-8") for p in (here / "licenses").glob("*.txt")}
    for source, answer, *_ in [*FACTS, *DOCS_ONLY]:
        flat = " ".join(docs[source].split())
        assert answer in flat, (source, answer)
    trained = {f[1] for f in FACTS}
    assert not [a for _, a, _ in DOCS_ONLY if a in trained], "a docs_only answer is also a trained answer"
    (here / "qa").mkdir(exist_ok=True)
    for split, column in (("train", 2), ("test", 3)):
        text = "".join(json.dumps(r) + "\n" for r in rows(column))
        (here / "qa" / f"{split}.jsonl").write_text(text, encoding="utf-8")
    only = "".join(json.dumps({"question": q, "answer": a, "source": s}) + "\n" for s, a, q in DOCS_ONLY)
    (here / "qa" / "docs_only.jsonl").write_text(only, encoding="utf-8")
    print(f"{len(FACTS)} facts and {len(DOCS_ONLY)} docs-only facts checked in their documents; "
          "wrote qa/train.jsonl, qa/test.jsonl and qa/docs_only.jsonl")  # fmt: skip
