"""Hand-checked questions on five pieces of software reference documentation shipped by Debian packages
(dpkg's specs in /usr/share/doc/dpkg/spec and base-passwd's users-and-groups.html); every answer occurs
verbatim in its source document. Writes qa/train.jsonl, qa/test.jsonl (held-out wordings of the same
facts) and qa/docs_only.jsonl (facts that are only in the documents, never in the training questions)."""

# ruff: noqa: E501  (one fact per line reads best)

import html
import json
import re
from pathlib import Path

FACTS = [
    # (source, answer, training question, held-out question)
    ("triggers", "dpkg-trigger", "Which program can any program run to activate an explicit dpkg trigger?",
     "What command-line tool is used to fire an explicit trigger by hand, ideally from a maintainer script?"),
    ("triggers", "triggers-pending", "Which dpkg status does a package have when it has pending triggers but would otherwise be installed?",
     "If an installed package gets a trigger added to its pending list, what status does it move to?"),
    ("triggers", "postinst triggered", "Which maintainer script invocation does dpkg run to process a package's pending triggers?",
     "How does dpkg call the interested package's script, and with what first argument, when its triggers need processing?"),
    ("triggers", "idempotent", "What property should trigger processing have, according to the dpkg triggers specification?",
     "Running a package's trigger processing more than once must do no harm; what word does the dpkg spec use for this?"),
    ("triggers", "/var/lib/dpkg/triggers/File", "Which file lists all of the filename trigger interests on a dpkg system?",
     "Where on disk does dpkg keep the list of file trigger interests together with the interested packages?"),
    ("triggers", "/var/lib/dpkg/triggers/Unincorp", "Which file holds the triggers requested by dpkg-trigger that are not yet incorporated into the status file?",
     "Where does dpkg-trigger record activations that have not yet made it into dpkg's status database?"),
    ("triggers", "hare-and-tortoise", "Which approach does dpkg use to detect trigger cycles?",
     "What kind of algorithm catches packages that keep triggering each other in a loop?"),
    ("triggers", "/usr/share/omf", "In the scrollkeeper worked example, which directory does scrollkeeper declare a trigger interest in?",
     "What path does scrollkeeper's triggers control file register interest in, in the example of the dpkg triggers spec?"),
    ("triggers", "absolute", "What kind of pathname must the name of a file trigger be?",
     "A file trigger is named by a filesystem path; what must be true of that pathname?"),
    ("rootless-builds", "Rules-Requires-Root", "Which field of the Source stanza of debian/control declares whether debian/rules binary needs (fake)root?",
     "What debian/control field lets a source package say that its binary target can be built without fakeroot?"),
    ("rootless-builds", "binary-targets", "Which Rules-Requires-Root value is the default, meaning debian/rules binary must always run under (fake)root?",
     "What is the status quo value of the Rules-Requires-Root field?"),
    ("rootless-builds", "DEB_RULES_REQUIRES_ROOT", "Which environment variable does a builder use to tell the rules file that it supports rootless builds, and at what level?",
     "Through what environment variable does the build driver pass the effective Rules-Requires-Root value to debian/rules?"),
    ("rootless-builds", "DEB_GAIN_ROOT_CMD", "Which environment variable holds the command that promotes a given command to (fake)root in the Gain Root API?",
     "In a rootless build, what variable do tools prefix a command with to run it as (fake)root?"),
    ("rootless-builds", "DPKG_GAIN_ROOT_CMD", "What was the Gain Root API variable called between dpkg 1.19.0 and dpkg 1.19.1?",
     "Under which old, no longer allowed name was the gain-root command variable exposed before the rootless builds spec became stable?"),
    ("rootless-builds", "--root-owner-group", "Which dpkg-deb --build option lets dh_builddeb control the owner and group of files without (fake)root?",
     "What option of dpkg-deb --build sets file ownership values so that building a .deb needs no fakeroot?"),
    ("protected-field", "Protected", "What is the name of the new field proposed to split off part of the Essential packages?",
     "Which package control field does the dpkg draft spec propose for packages that are hard to remove but not required to be installed?"),
    ("protected-field", "Important", "Which pre-existing field, supported only by apt, would the proposed Protected field phase out?",
     "What earlier apt-only field has the right semantics but a confusing name, according to the Protected field proposal?"),
    ("protected-field", "draft, experimental", "What is the status of the Protected field specification?",
     "How mature is the dpkg proposal for a Protected field, according to its status line?"),
    ("protected-field", "https://wiki.debian.org/Teams/Dpkg/Spec/ProtectedField", "At which URL is the Protected field specification published?",
     "Which Debian wiki page is given as the address of the Protected field spec?"),
    ("frontend-api", "<admindir>/lock-frontend", "Which lock file must a package management frontend acquire before the dpkg database lock?",
     "Where is the frontend lock that a dpkg frontend takes first, before locking the database?"),
    ("frontend-api", "DPKG_FRONTEND_LOCKED", "Which environment variable should a frontend set when it invokes dpkg, so that dpkg does not acquire the frontend lock itself?",
     "What variable tells dpkg that the calling frontend already holds the frontend lock?"),
    ("frontend-api", "file record locks", "What kind of locks must the dpkg frontend and database locks be?",
     "Which locking mechanism must be used for the frontend lock and the dpkg database lock?"),
    ("users-and-groups", "update-passwd", "Which tool keeps the entries of the base-passwd master files in sync on all Debian systems?",
     "What program synchronises /etc/passwd and /etc/group with the master copies shipped by base-passwd?"),
    ("users-and-groups", "/bin/sync", "What is the shell of the sync user on Debian?",
     "Which program is set as the login shell of the Debian sync account?"),
    ("users-and-groups", "www-data", "As which user do some web servers run on Debian?",
     "Which Debian account owns the data written out by web servers?"),
    ("users-and-groups", "37", "What uid did the operator user have on Debian?",
     "Which user id number was assigned to the historical operator account?"),
    ("users-and-groups", "Dialup IP", "What does the name of the dip group stand for?",
     "The Debian group dip is an abbreviation of what?"),
    ("users-and-groups", "_ssh", "To which group is ssh-agent setgid on Debian to prevent ptrace attacks?",
     "Which group does ssh-agent run setgid to, so that it cannot be ptraced?"),
]  # fmt: skip

DOCS_ONLY = [
    # (source, answer, question): facts of the documents that no FACTS entry covers
    ("triggers", "deb-triggers(5)", "Which manual page describes how packages declare their trigger interests and activations?"),
    ("triggers", "/var/lib/dpkg/triggers/Lock", "Which file is the fcntl lockfile for the dpkg trigger system?"),
    ("triggers", "fifo order", "In what order may dpkg process triggers during a single run to minimize redundant work?"),
    ("triggers", "Python modules", "What does the dpkg triggers spec give as an example of a loose coupling between an interested and a triggering package?"),
    ("rootless-builds", "debhelper/upstream-make-install", "Which Rules-Requires-Root keyword makes dh_auto_install run the upstream Makefile's install target under (fake)root?"),
    ("rootless-builds", "dh_testroot", "Which debhelper command becomes a no-op when Rules-Requires-Root is set to no?"),
    ("rootless-builds", "printable ASCII characters", "What must both the namespace and the cases part of a Rules-Requires-Root keyword consist entirely of?"),
    ("protected-field", "EssentialOnDiet", "What is the name of the Debian wiki proposal page (under Proposals/) cited for trimming down the pseudo-essential set?"),
    ("protected-field", "dependency loops", "Besides other uses, what does the Essential field minimize by making dependencies implicit?"),
    ("users-and-groups", "/var/cache/man", "Where does the man program, running as user man, write its cat pages?"),
    ("users-and-groups", "lpadmin", "Which Debian group allows a user to add, modify and remove printers from cups and foomatic?"),
    ("users-and-groups", "plugdev", "Members of which Debian group can access removable devices without explicit configuration in /etc/fstab?"),
]  # fmt: skip


def visible_text(path: Path) -> str:
    """The document's text with whitespace collapsed; for HTML, its visible text (tags stripped, entities unescaped)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in {".html", ".htm"}:
        text = html.unescape(re.sub(r"<[^>]*>", " ", text))
    return " ".join(text.split())


def rows(column: int) -> list[dict]:
    return [{"question": f[column], "answer": f[1], "source": f[0]} for f in FACTS]


def check(docs: dict[str, str]) -> None:
    problems = []
    for source, answer, *_ in [*FACTS, *DOCS_ONLY]:
        if source not in docs:
            problems.append(f"{source!r}: no such document in docs/")
        elif " ".join(answer.split()) not in docs[source]:
            problems.append(f"{source!r}: answer {answer!r} does not occur verbatim")
    fact_answers = {answer for _, answer, *_ in FACTS}
    problems += [f"docs_only answer {a!r} is also a FACTS answer" for _, a, _ in DOCS_ONLY if a in fact_answers]
    if problems:
        raise SystemExit("facts.py: " + "; ".join(problems))


if __name__ == "__main__":
    here = Path(__file__).parent
    docs = {p.stem: visible_text(p) for p in sorted((here / "docs").iterdir()) if p.is_file()}
    check(docs)
    (here / "qa").mkdir(exist_ok=True)
    splits = {
        "train": rows(2),
        "test": rows(3),
        "docs_only": [{"question": q, "answer": a, "source": s} for s, a, q in DOCS_ONLY],
    }
    for split, records in splits.items():
        text = "".join(json.dumps(r) + "\n" for r in records)
        (here / "qa" / f"{split}.jsonl").write_text(text, encoding="utf-8")
    print(f"{len(FACTS)} facts and {len(DOCS_ONLY)} docs-only facts checked in their documents; "
          "wrote qa/train.jsonl, qa/test.jsonl and qa/docs_only.jsonl")  # fmt: skip
