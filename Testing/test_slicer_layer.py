"""The Slicer layer checked against the real Slicer API, without Slicer (it cannot run on CI).

The two module files are parsed (``ast``), never imported. ``SlicerApiChecker`` follows which
variables hold MRML / SlicerRT objects (from ``AddNewNodeByClass("vtkMRML...")``, ``slicer.util``
getters, annotated parameters and locals, typed parameter-node fields, module logics, and the
return types of known getters) and checks every method called on them against the class's
methods in the real Slicer API lists (superclasses walked up). It also checks every
``slicer.util.X`` / ``slicer.packaging.X`` call (name and keyword arguments), every
``slicer.mrmlScene.X`` call, and calls into the scripted-module base classes. A VTK-style
(CamelCase) method called on an object whose class it cannot tell is reported too, so a call
cannot slip past unchecked. Negative tests feed it misspelt snippets.

The API lists are not committed: they are read from ``../shared/slicer-api`` (or
``$MAMBADOSE_SLICER_API``), and the tests that need them skip when they are absent (CI). The
checker's own snippet tests run on a few hand-written entries (``SNIPPET_LISTS``) everywhere, and on
the real lists too where they are present.
Our own additions (classes the lists lack, with their sources) are in
``Testing/data/slicer-api/supplement.json``. What the modules take from the API (each ``Use``:
receiver and name, the arguments of function calls) is committed as a manifest,
``Testing/data/slicer_api_used.json``: always checked to equal what the modules use now, and
checked against the real lists wherever they are present. After changing a Slicer call,
regenerate it with ``python Testing/test_slicer_layer.py --write-manifest``.

The ``.ui`` file must parse, hold every ``self.ui.<name>`` the module uses, use only Qt / CTK /
qMRML widget classes, and bind ``SlicerParameterName`` properties to parameter-node fields of a
matching type.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import unittest
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
SHARED_API = Path(os.environ.get("MAMBADOSE_SLICER_API", ROOT.parent / "shared" / "slicer-api"))
API_FILES = (
    "slicer_util.json",
    "slicer_packaging.json",
    "scripted_loadable_module.json",
    "mrml_classes.json",
)
SUPPLEMENT = Path(__file__).resolve().parent / "data" / "slicer-api" / "supplement.json"
MANIFEST = Path(__file__).resolve().parent / "data" / "slicer_api_used.json"
WRITE_MANIFEST = "python Testing/test_slicer_layer.py --write-manifest"
PREDICTION = ROOT / "MambaDosePrediction" / "MambaDosePrediction.py"
TRAINING = ROOT / "MambaDoseTraining" / "MambaDoseTraining.py"
UI_FILE = ROOT / "MambaDosePrediction" / "Resources" / "UI" / "MambaDosePrediction.ui"
MODULE_FILES = (PREDICTION, TRAINING)

#: what known getters return: method -> class (receiver-specific entries first)
RETURNS_BY_RECEIVER: dict[tuple[str, str], str] = {
    ("vtkMRMLSegmentationNode", "GetDisplayNode"): "vtkMRMLSegmentationDisplayNode",
    ("vtkMRMLScalarVolumeNode", "GetDisplayNode"): "vtkMRMLScalarVolumeDisplayNode",
}
RETURNS: dict[str, str] = {
    "GetScalarVolumeDisplayNode": "vtkMRMLScalarVolumeDisplayNode",
    "GetDisplayNode": "vtkMRMLDisplayNode",
    "GetSegmentation": "vtkSegmentation",
    "GetSegment": "vtkSegment",
    "GetSubjectHierarchyNode": "vtkMRMLSubjectHierarchyNode",
    "GetColorTableNode": "vtkMRMLColorTableNode",
    "SetupColorTableNodeForDoseVolumeNode": "vtkMRMLColorTableNode",
    "AddDefaultColorLegendDisplayNode": "vtkMRMLColorLegendDisplayNode",
    "GetDoseVolumeNode": "vtkMRMLScalarVolumeNode",
    "GetTableNode": "vtkMRMLTableNode",
    "GetNthPlotSeriesNode": "vtkMRMLPlotSeriesNode",
    "GetNodeByID": "vtkMRMLNode",
    "GetFirstNodeByName": "vtkMRMLNode",
}
#: slicer.util functions returning a node: function -> (class, keyword or position naming the class)
UTIL_RETURNS: dict[str, tuple[str, str | int | None]] = {
    "addVolumeFromArray": ("vtkMRMLScalarVolumeNode", "nodeClassName"),
    "getFirstNodeByClassByName": ("vtkMRMLNode", 0),
    "getNode": ("vtkMRMLNode", None),
    "getFirstNodeByName": ("vtkMRMLNode", None),
    "loadVolume": ("vtkMRMLScalarVolumeNode", None),
    "loadSegmentation": ("vtkMRMLSegmentationNode", None),
}
#: vtkMRMLScene methods whose first argument names the class of the node they return
SCENE_NODE_FACTORIES = {
    "AddNewNodeByClass",
    "AddNewNodeByClassWithID",
    "CreateNodeByClass",
    "GetFirstNodeByClass",
}
WRAPPER = "parameterNodeWrapper"
#: the classes of slicer.ScriptedLoadableModule (test_manifest_names_exist_in_the_slicer_api checks)
SCRIPTED_CLASSES = (
    "ScriptedLoadableModule",
    "ScriptedLoadableModuleWidget",
    "ScriptedLoadableModuleLogic",
    "ScriptedLoadableModuleTest",
)
#: receiver of the methods of a module class's Slicer base classes called on ``self``
SELF = "self: "
FUNCTION_NAMESPACES = ("slicer.util", "slicer.packaging")


@dataclass(frozen=True)
class Use:
    """One name a module takes from the Slicer API.

    ``receiver`` is ``slicer.util`` / ``slicer.packaging`` (a function called or imported;
    ``positional`` and ``keywords`` are the arguments of a call), ``slicer.ScriptedLoadableModule``
    (a name imported), ``slicer`` (a class named: imported, or given to a scene's node factory),
    ``self: <bases>`` (a method of the module class's Slicer base classes called on ``self``), or a
    class (a method called on one of its objects; on ``parameterNodeWrapper``, an attribute of a
    parameter node that is not one of its fields).
    """

    receiver: str
    name: str
    positional: int = 0
    keywords: tuple[str, ...] = ()


@functools.cache
def own_lists() -> tuple[dict[str, dict], dict[str, str]]:
    """Our supplement, always present: classes the shared lists lack, and module logic classes."""
    supplement = json.loads(SUPPLEMENT.read_text())
    logics = {k: v for k, v in supplement["module_logics"].items() if k != "note"}
    return supplement["classes"], logics


def shared_api_present(folder: Path = SHARED_API) -> bool:
    return all((folder / name).is_file() for name in API_FILES)


@dataclass
class SlicerApi:
    """The API lists: slicer.util / slicer.packaging functions, scripted-module bases, classes."""

    util: dict[str, list[str]]
    packaging: dict[str, list[str]]
    scripted: dict[str, list[str]]
    classes: dict[str, dict]

    @classmethod
    def load(cls, folder: Path = SHARED_API) -> SlicerApi:
        """The real lists in ``folder`` (``../shared/slicer-api``) with our supplement."""

        def read(name: str) -> dict:
            return json.loads((folder / name).read_text())

        classes = dict(read("mrml_classes.json")["classes"])
        classes.update(own_lists()[0])
        return cls(
            util=read("slicer_util.json")["functions_and_classes"],
            packaging=read("slicer_packaging.json")["functions_and_classes"],
            scripted=read("scripted_loadable_module.json")["classes"],
            classes=classes,
        )

    def problems(self, use: Use) -> list[str]:
        """What these lists say is wrong with ``use`` ([] when it exists)."""
        receiver, name = use.receiver, use.name
        if receiver in FUNCTION_NAMESPACES:
            return self._function_problems(use)
        if receiver == "slicer.ScriptedLoadableModule":
            return [] if name in self.scripted else [f"{receiver} has no {name}"]
        if receiver == "slicer":
            return [] if self.knows(name) else [f"class {name} is not in the API lists"]
        if receiver.startswith(SELF):
            allowed: set[str] = set()
            for base in receiver[len(SELF) :].split(", "):
                allowed |= set(self.scripted.get(base, []))
                if base == "VTKObservationMixin":
                    allowed |= set(self.util["VTKObservationMixin"])
            return [] if name in allowed else [f"no method {name} in the class or its Slicer base classes"]
        if receiver == "VTKObservationMixin" or receiver in SCRIPTED_CLASSES:
            methods = (
                self.util[receiver] if receiver == "VTKObservationMixin" else self.scripted.get(receiver, [])
            )
            return [] if name in methods else [f"{receiver} has no method {name}"]
        if not self.knows(receiver):
            return [f"{name}: class {receiver} is not in the API lists"]
        return [] if self.has_method(receiver, name) else [f"{receiver} has no method {name}"]

    def _function_problems(self, use: Use) -> list[str]:
        namespace, name = use.receiver, use.name
        functions = self.util if namespace == "slicer.util" else self.packaging
        if name not in functions:
            return [f"{namespace} has no {name}"]
        params = functions[name]
        named = [p for p in params if not p.startswith("*") and p not in ("self",)]
        problems = []
        if "**kwargs" not in params:
            problems += [f"{namespace}.{name} has no parameter {k}" for k in use.keywords if k not in named]
        if not any(p.startswith("*") and not p.startswith("**") for p in params) and use.positional > len(
            named
        ):
            problems.append(f"{namespace}.{name} takes at most {len(named)} positional arguments")
        return problems

    def knows(self, class_name: str) -> bool:
        return class_name in self.classes

    def has_method(self, class_name: str, method: str) -> bool:
        """True when ``class_name`` or a listed superclass has ``method``."""
        seen = set()
        while class_name in self.classes and class_name not in seen:
            seen.add(class_name)
            entry = self.classes[class_name]
            if method in entry["public_methods"]:
                return True
            class_name = entry["superclass"]
        return False


@dataclass
class ModuleClass:
    name: str
    bases: list[str]
    methods: dict[str, ast.FunctionDef]
    fields: dict[str, ast.expr] = field(default_factory=dict)  # parameter-node fields
    is_wrapper: bool = False
    self_types: dict[str, str] = field(default_factory=dict)
    self_attrs: set[str] = field(default_factory=set)


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of Names/Attributes, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _literal(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


class SlicerApiChecker:
    """Check one module's source against the API; ``problems`` lists what does not exist.

    ``uses`` lists every name taken from the Slicer API. Without the lists (``api`` None) the uses
    are only recorded, and ``problems`` holds what needs no lists (objects of untold class,
    unknown parameter-node fields, methods missing from the module's own classes).
    """

    def __init__(self, api: SlicerApi | None, source: str, filename: str = "<module>") -> None:
        self.api = api
        self.own_classes, self.module_logics = own_lists()
        self.filename = filename
        self.tree = ast.parse(source)
        self.problems: list[str] = []
        self.uses: list[Use] = []
        self.checked_calls = 0  # calls on MRML/SlicerRT objects and slicer functions, recorded and checked
        self.module_names: set[str] = set()  # names bound to imported modules
        self.imported_classes: set[str] = set()
        self.classes: dict[str, ModuleClass] = {}
        self.functions: dict[str, ast.FunctionDef] = {}

    # -- setup ---------------------------------------------------------------------------------

    def run(self) -> list[str]:
        self._collect_top_level()
        for cls in self.classes.values():
            self._collect_self_types(cls)
        for func in self.functions.values():
            self._check_function(func, None)
        for cls in self.classes.values():
            for method in cls.methods.values():
                self._check_function(method, cls)
        return self.problems

    def _problem(self, node: ast.AST, text: str) -> None:
        self.problems.append(f"{self.filename}:{getattr(node, 'lineno', '?')}: {text}")

    def _use(self, node: ast.AST, use: Use, prefix: str = "") -> None:
        """Record ``use``; with the lists, check it."""
        self.uses.append(use)
        if self.api is not None:
            for text in self.api.problems(use):
                self._problem(node, prefix + text)

    def _collect_top_level(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    self.module_names.add(alias.asname or alias.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom):
                self._check_from_import(node)
                for alias in node.names:
                    name = alias.asname or alias.name
                    if name[:1].isupper() or name.startswith("vtk"):
                        self.imported_classes.add(name)
                    else:
                        self.module_names.add(name)
        for node in self._top_level_statements(self.tree.body):
            if isinstance(node, ast.ClassDef):
                self.classes[node.name] = self._module_class(node)
            elif isinstance(node, ast.FunctionDef):
                self.functions[node.name] = node

    def _top_level_statements(self, body: list[ast.stmt]):
        """Module statements, looking into module-level if/try blocks (not into defs)."""
        for node in body:
            yield node
            if isinstance(node, ast.If | ast.Try):
                for block in (
                    node.body,
                    node.orelse,
                    getattr(node, "handlers", []),
                    getattr(node, "finalbody", []),
                ):
                    for item in block:
                        yield from self._top_level_statements(
                            item.body if isinstance(item, ast.ExceptHandler) else [item]
                        )

    def _check_from_import(self, node: ast.ImportFrom) -> None:
        names = [a.name for a in node.names if a.name != "*"]
        if node.module in ("slicer.util", "slicer.ScriptedLoadableModule"):
            for name in names:
                self._use(node, Use(node.module, name))
        elif node.module == "slicer":
            for name in names:
                if name.startswith("vtk"):
                    self._use(node, Use("slicer", name))

    def _module_class(self, node: ast.ClassDef) -> ModuleClass:
        bases = [_dotted(b) or "" for b in node.bases]
        methods = {f.name: f for f in node.body if isinstance(f, ast.FunctionDef)}
        cls = ModuleClass(node.name, bases, methods)
        cls.is_wrapper = any(_dotted(d) == WRAPPER for d in node.decorator_list)
        if cls.is_wrapper:
            cls.fields = {s.target.id: s.annotation for s in node.body if isinstance(s, ast.AnnAssign)}
        return cls

    def _collect_self_types(self, cls: ModuleClass) -> None:
        """Types of ``self.x`` from assignments and annotations anywhere in the class."""
        for method in cls.methods.values():
            env = self._parameter_types(method, cls)
            for node in ast.walk(method):
                targets = []
                if isinstance(node, ast.Assign):
                    targets, value, ann = node.targets, node.value, None
                elif isinstance(node, ast.AnnAssign):
                    targets, value, ann = [node.target], node.value, node.annotation
                for target in targets:
                    if isinstance(target, ast.Attribute) and _dotted(target.value) == "self":
                        cls.self_attrs.add(target.attr)
                        typ = self._annotation_type(ann) if ann is not None else None
                        typ = typ or (self._infer(value, env, cls) if value is not None else None)
                        if typ and target.attr not in cls.self_types:
                            cls.self_types[target.attr] = typ

    # -- types ---------------------------------------------------------------------------------

    def _annotation_type(self, ann: ast.AST | None) -> str | None:
        if ann is None:
            return None
        if isinstance(ann, ast.Constant) and isinstance(ann.value, str):
            try:
                return self._annotation_type(ast.parse(ann.value, mode="eval").body)
            except SyntaxError:
                return None
        if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr):
            return self._annotation_type(ann.left) or self._annotation_type(ann.right)
        if isinstance(ann, ast.Subscript) and _dotted(ann.value) in ("Optional", "typing.Optional"):
            return self._annotation_type(ann.slice)
        name = _dotted(ann)
        if name is None:
            return None
        name = name.split(".")[-1]
        if name in self.classes:
            return f"{WRAPPER}:{name}" if self.classes[name].is_wrapper else f"class:{name}"
        if name.startswith("vtk") or name in self.own_classes:
            return name
        return None

    def _parameter_types(self, func: ast.FunctionDef, cls: ModuleClass | None) -> dict[str, str]:
        env = {}
        for arg in func.args.args + func.args.kwonlyargs:
            typ = self._annotation_type(arg.annotation)
            if typ:
                env[arg.arg] = typ
        if cls is not None and func.args.args and func.args.args[0].arg == "self":
            env["self"] = f"class:{cls.name}"
        return env

    def _class_method(self, class_name: str, method: str) -> ast.FunctionDef | None:
        cls = self.classes.get(class_name)
        while cls is not None:
            if method in cls.methods:
                return cls.methods[method]
            cls = next((self.classes[b] for b in cls.bases if b in self.classes), None)
        return None

    def _infer(self, expr: ast.AST, env: dict[str, str], cls: ModuleClass | None) -> str | None:
        """The class of the object ``expr`` evaluates to, when it can be told."""
        if isinstance(expr, ast.Name):
            return env.get(expr.id)
        if isinstance(expr, ast.Attribute):
            owner = self._infer(expr.value, env, cls)
            if owner and owner.startswith("class:"):
                owner_cls = self.classes.get(owner[6:])
                return owner_cls.self_types.get(expr.attr) if owner_cls else None
            if owner and owner.startswith(f"{WRAPPER}:"):
                annotation = self.classes[owner.split(":")[1]].fields.get(expr.attr)
                return self._annotation_type(annotation)
            return None
        if isinstance(expr, ast.Call):
            return self._infer_call(expr, env, cls)
        return None

    def _infer_call(self, call: ast.Call, env: dict[str, str], cls: ModuleClass | None) -> str | None:
        func = call.func
        name = _dotted(func)
        first = _literal(call.args[0]) if call.args else None
        if name and name.startswith("slicer.mrmlScene."):
            method = name.rsplit(".", 1)[1]
            if method in SCENE_NODE_FACTORIES:
                return first or "vtkMRMLNode"
            return RETURNS.get(method)
        if name and name.startswith("slicer.util."):
            entry = UTIL_RETURNS.get(name.rsplit(".", 1)[1])
            if entry is None:
                return None
            default, where = entry
            if isinstance(where, int):
                return (_literal(call.args[where]) if len(call.args) > where else None) or default
            if isinstance(where, str):
                keyword = next((k.value for k in call.keywords if k.arg == where), None)
                return _literal(keyword) or default
            return default
        if name and re.fullmatch(r"slicer\.modules\.\w+\.logic", name):
            return self.module_logics.get(name.split(".")[2])
        if isinstance(func, ast.Name):
            if func.id in self.classes:
                target = self.classes[func.id]
                return f"{WRAPPER}:{func.id}" if target.is_wrapper else f"class:{func.id}"
            if func.id in self.functions:
                return self._annotation_type(self.functions[func.id].returns)
            return None
        if isinstance(func, ast.Attribute):
            if isinstance(func.value, ast.Name) and func.value.id in self.classes:  # Class.staticmethod()
                method = self._class_method(func.value.id, func.attr)
                return self._annotation_type(method.returns) if method else None
            owner = self._infer(func.value, env, cls)
            if owner and owner.startswith("class:"):
                method = self._class_method(owner[6:], func.attr)
                return self._annotation_type(method.returns) if method else None
            if owner and not owner.startswith(WRAPPER):
                return RETURNS_BY_RECEIVER.get((owner, func.attr)) or RETURNS.get(func.attr)
        return None

    # -- checks --------------------------------------------------------------------------------

    def _check_function(self, func: ast.FunctionDef, cls: ModuleClass | None) -> None:
        env = self._parameter_types(func, cls)
        events = []  # (position, kind, node): calls and bindings in source order
        for node in ast.walk(func):
            if isinstance(node, ast.Call):
                events.append(((node.lineno, node.col_offset), 1, node))
            elif isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Store):
                events.append(((node.lineno, node.col_offset), 2, node))
            elif isinstance(node, ast.Assign | ast.AnnAssign) and node is not func:
                events.append(((node.end_lineno, node.end_col_offset), 0, node))
            elif isinstance(node, ast.FunctionDef | ast.Lambda) and node is not func:
                for arg in node.args.args:
                    typ = self._annotation_type(arg.annotation)
                    if typ:
                        env[arg.arg] = typ
        for _, kind, node in sorted(events, key=lambda e: (e[0], -e[1])):
            if kind == 0:
                self._bind(node, env, cls)
            elif kind == 1:
                self._check_call(node, env, cls)
            else:
                self._check_wrapper_attribute(node, env, cls)

    def _bind(self, node: ast.Assign | ast.AnnAssign, env: dict[str, str], cls: ModuleClass | None) -> None:
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
            typ = self._annotation_type(node.annotation)
            if typ is None and node.value is not None:
                typ = self._infer(node.value, env, cls)
        else:
            targets = node.targets
            typ = self._infer(node.value, env, cls)
        for target in targets:
            if isinstance(target, ast.Name):
                if typ:
                    env[target.id] = typ
                else:
                    env.pop(target.id, None)

    def _check_wrapper_attribute(
        self, node: ast.Attribute, env: dict[str, str], cls: ModuleClass | None
    ) -> None:
        owner = self._infer(node.value, env, cls)
        if owner and owner.startswith(f"{WRAPPER}:"):
            wrapper = self.classes[owner.split(":")[1]]
            if node.attr in wrapper.fields:
                return
            self.uses.append(Use(WRAPPER, node.attr))  # checked here: the supplement is always present
            if node.attr not in self.own_classes[WRAPPER]["public_methods"]:
                self._problem(node, f"parameter node {wrapper.name} has no field or method {node.attr}")

    def _check_call(self, call: ast.Call, env: dict[str, str], cls: ModuleClass | None) -> None:
        func = call.func
        if not isinstance(func, ast.Attribute):
            return
        name = _dotted(func) or ""
        method = func.attr
        if name.startswith("slicer.util.") and name.count(".") == 2:
            self._check_function_call(call, "slicer.util")
            return
        if name.startswith("slicer.packaging.") and name.count(".") == 2:
            self._check_function_call(call, "slicer.packaging")
            return
        if name.startswith("slicer.mrmlScene.") and name.count(".") == 2:
            self._check_method(call, "vtkMRMLScene", method)
            self._check_class_literal(call)
            return
        if isinstance(func.value, ast.Name) and func.value.id in (*SCRIPTED_CLASSES, "VTKObservationMixin"):
            self._use(call, Use(func.value.id, method))
            return
        if isinstance(func.value, ast.Call) and _dotted(func.value.func) == "super" and cls is not None:
            self._check_self_call(call, cls, method)
            return
        owner = self._infer(func.value, env, cls)
        if owner is None:
            receiver = func.value.id if isinstance(func.value, ast.Name) else None
            is_namespace = receiver in self.module_names or receiver in self.imported_classes
            if method[:1].isupper() and not is_namespace and receiver not in self.classes:
                self._problem(
                    call, f"cannot tell the class of the object {method} is called on (annotate it)"
                )
            return
        if owner.startswith(f"{WRAPPER}:"):
            return  # attribute access checked by _check_wrapper_attribute
        if owner.startswith("class:"):
            if _dotted(func.value) == "self" and cls is not None:
                self._check_self_call(call, cls, method)
            elif self._class_method(owner[6:], method) is None:
                self._problem(call, f"{owner[6:]} has no method {method}")
            return
        self._check_method(call, owner, method)

    def _check_method(self, call: ast.Call, class_name: str, method: str) -> None:
        self._use(call, Use(class_name, method))
        self.checked_calls += 1

    def _check_class_literal(self, call: ast.Call) -> None:
        first = _literal(call.args[0]) if call.args else None
        if call.func.attr in SCENE_NODE_FACTORIES and first:
            self._use(call, Use("slicer", first))

    def _check_self_call(self, call: ast.Call, cls: ModuleClass, method: str) -> None:
        """``self.m()`` / ``super().m()`` in a class: its own method, an attribute, or a base class's."""
        if self._class_method(cls.name, method) is not None or method in cls.self_attrs:
            return
        bases = [b for b in cls.bases if b in (*SCRIPTED_CLASSES, "VTKObservationMixin")]
        if not bases:
            self._problem(call, f"{cls.name}: no method {method} in the class or its Slicer base classes")
            return
        if "ScriptedLoadableModuleTest" in bases and method in dir(unittest.TestCase):
            return
        self._use(call, Use(SELF + ", ".join(bases), method), prefix=f"{cls.name}: ")

    def _check_function_call(self, call: ast.Call, namespace: str) -> None:
        keywords = tuple(k.arg for k in call.keywords if k.arg is not None)
        self._use(call, Use(namespace, call.func.attr, len(call.args), keywords))
        self.checked_calls += 1


# -------------------------------------------------------------------------------------- manifest


def manifest_of(uses: list[Use]) -> dict:
    """The manifest of ``uses``: receiver -> sorted names; the arguments of function calls."""
    names: dict[str, set[str]] = {}
    arguments: dict[str, dict] = {}
    for use in uses:
        names.setdefault(use.receiver, set()).add(use.name)
        if use.positional or use.keywords:
            entry = arguments.setdefault(f"{use.receiver}.{use.name}", {"positional": 0, "keywords": []})
            entry["positional"] = max(entry["positional"], use.positional)
            entry["keywords"] = sorted({*entry["keywords"], *use.keywords})
    return {
        "note": (
            "The Slicer API names MambaDosePrediction.py and MambaDoseTraining.py use, as "
            "Testing/test_slicer_layer.py resolves them (receiver -> names; the most positional "
            "arguments and the keywords of each slicer.util / slicer.packaging call). Generated by "
            f"`{WRITE_MANIFEST}`; checked against the real lists where ../shared/slicer-api is present."
        ),
        "uses": {receiver: sorted(names[receiver]) for receiver in sorted(names)},
        "arguments": {key: arguments[key] for key in sorted(arguments)},
    }


def uses_of(manifest: dict) -> list[Use]:
    """The manifest's entries as uses (a function's arguments merged over its calls)."""
    uses = []
    for receiver, names in manifest["uses"].items():
        for name in names:
            args = manifest["arguments"].get(f"{receiver}.{name}", {})
            uses.append(Use(receiver, name, args.get("positional", 0), tuple(args.get("keywords", ()))))
    return uses


def record_modules() -> list[SlicerApiChecker]:
    """Both modules run through the checker without the lists (what they use; what needs no lists)."""
    checkers = [SlicerApiChecker(None, path.read_text(), path.name) for path in MODULE_FILES]
    for checker in checkers:
        checker.run()
    return checkers


def _manifest_changes(committed: dict, now: dict) -> list[str]:
    changes = []
    for receiver in sorted(set(committed["uses"]) | set(now["uses"])):
        old, new = set(committed["uses"].get(receiver, [])), set(now["uses"].get(receiver, []))
        changes += [f"+ {receiver}: {name}" for name in sorted(new - old)]
        changes += [f"- {receiver}: {name}" for name in sorted(old - new)]
    for key in sorted(set(committed["arguments"]) | set(now["arguments"])):
        old, new = committed["arguments"].get(key), now["arguments"].get(key)
        if old != new:
            changes.append(f"~ {key} arguments: {old} -> {new}")
    return changes


# ------------------------------------------------------------------------------------------ tests


#: The entries of the API the checker's snippet tests need, written by hand (public Slicer / SlicerRT
#: API) so that those tests run without the real lists (CI); our supplement is added as
#: ``SlicerApi.load`` adds it. Where the real lists are present,
#: test_snippet_lists_agree_with_the_slicer_api checks every entry against them.
SNIPPET_LISTS = {
    "util": {
        "addVolumeFromArray": ["narray", "ijkToRAS", "name", "nodeClassName"],
        "arrayFromVolume": ["volumeNode"],
        "getFirstNodeByClassByName": ["className", "name", "scene"],
        "getNode": ["pattern", "index", "scene"],
    },
    "packaging": {
        "pip_ensure": [
            "requirements",
            "constraints",
            "skip_packages",
            "prompt_install",
            "prompt_restart",
            "requester",
            "skip_in_testing",
            "show_progress",
        ]
    },
    "scripted": {"ScriptedLoadableModuleWidget": ["resourcePath", "setup"]},
    "classes": {  # class: (superclass, methods)
        "vtkMRMLScene": ("vtkObject", ["AddNewNodeByClass", "GenerateUniqueName"]),
        "vtkMRMLNode": ("vtkObject", ["SetName"]),
        "vtkMRMLStorableNode": ("vtkMRMLNode", []),
        "vtkMRMLTransformableNode": ("vtkMRMLStorableNode", []),
        "vtkMRMLDisplayableNode": ("vtkMRMLTransformableNode", ["GetDisplayNode"]),
        "vtkMRMLVolumeNode": ("vtkMRMLDisplayableNode", []),
        "vtkMRMLScalarVolumeNode": ("vtkMRMLVolumeNode", []),
        "vtkMRMLSegmentationNode": ("vtkMRMLDisplayableNode", ["GetSegmentation"]),
        "vtkSegmentation": ("vtkObject", ["AddEmptySegment"]),
        "vtkMRMLTableNode": ("vtkMRMLStorableNode", ["AddEmptyRow", "SetCellText"]),
        "vtkMRMLIsodoseNode": ("vtkMRMLNode", ["SetAndObserveDoseVolumeNode"]),
        "vtkSlicerIsodoseModuleLogic": ("vtkSlicerModuleLogic", ["CreateIsodoseSurfaces"]),
    },
}


def snippet_lists() -> SlicerApi:
    """``SNIPPET_LISTS`` with our supplement, in the structure ``SlicerApi.load`` gives."""
    classes = {
        name: {"superclass": superclass, "public_methods": methods}
        for name, (superclass, methods) in SNIPPET_LISTS["classes"].items()
    }
    classes.update(own_lists()[0])
    return SlicerApi(SNIPPET_LISTS["util"], SNIPPET_LISTS["packaging"], SNIPPET_LISTS["scripted"], classes)


@pytest.fixture(scope="module")
def api() -> SlicerApi:
    if not shared_api_present():
        pytest.skip(
            f"the Slicer API lists are not in {SHARED_API} (set MAMBADOSE_SLICER_API); "
            f"the modules are still checked against the manifest {MANIFEST.name}"
        )
    return SlicerApi.load()


@pytest.fixture(params=["snippet-lists", "slicer-api"])
def lists(request) -> SlicerApi:
    """The checker's snippet tests run against our hand-written lists (CI too) and the real ones."""
    return snippet_lists() if request.param == "snippet-lists" else request.getfixturevalue("api")


def check(api: SlicerApi, source: str) -> list[str]:
    return SlicerApiChecker(api, textwrap.dedent(source), "snippet").run()


def test_module_uses_match_the_manifest():
    """Runs everywhere (CI too): the modules use exactly the Slicer names in the committed manifest."""
    checkers = record_modules()
    assert [p for c in checkers for p in c.problems] == []  # the checks that need no lists
    assert checkers[MODULE_FILES.index(PREDICTION)].checked_calls >= 80  # the tracking reached the MRML calls
    committed = json.loads(MANIFEST.read_text())
    now = manifest_of([use for c in checkers for use in c.uses])
    changes = _manifest_changes(committed, now)
    assert not changes and committed == now, (
        f"the Slicer API names the modules use differ from {MANIFEST.relative_to(ROOT)}:\n"
        + "\n".join(changes)
        + f"\nregenerate it with `{WRITE_MANIFEST}` (its names are checked against the real lists "
        "where ../shared/slicer-api is present)"
    )


def test_manifest_names_exist_in_the_slicer_api(api):
    manifest = json.loads(MANIFEST.read_text())
    problems = [
        f"{use.receiver}.{use.name}: {text}" for use in uses_of(manifest) for text in api.problems(use)
    ]
    assert problems == []
    assert set(api.scripted) == set(SCRIPTED_CLASSES)  # the checker tells the base classes by these names
    assert all(name.startswith("vtk") for name in api.classes.keys() - own_lists()[0])  # annotations


def test_snippet_lists_agree_with_the_slicer_api(api):
    """Our hand-written lists say nothing the real ones do not (signatures in full, as the checker counts)."""
    assert {k: api.util[k] for k in SNIPPET_LISTS["util"]} == SNIPPET_LISTS["util"]
    assert {k: api.packaging[k] for k in SNIPPET_LISTS["packaging"]} == SNIPPET_LISTS["packaging"]
    for base, methods in SNIPPET_LISTS["scripted"].items():
        assert set(methods) <= set(api.scripted[base]), base
    for name, (superclass, methods) in SNIPPET_LISTS["classes"].items():
        assert api.knows(name) and api.classes[name]["superclass"] == superclass, name
        assert [m for m in methods if not api.has_method(name, m)] == [], name


@pytest.mark.parametrize("path", MODULE_FILES, ids=lambda p: p.name)
def test_module_calls_exist_in_the_slicer_api(api, path):
    checker = SlicerApiChecker(api, path.read_text(), path.name)
    assert checker.run() == []
    if path == PREDICTION:
        assert checker.checked_calls >= 80  # the tracking reached the MRML calls


GOOD_SNIPPET = """
    import slicer
    from slicer import vtkMRMLSegmentationNode
    from slicer.parameterNodeWrapper import parameterNodeWrapper
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget

    @parameterNodeWrapper
    class P:
        segmentation: vtkMRMLSegmentationNode

    def outputs(seg: vtkMRMLSegmentationNode, p: P):
        dose = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "dose")
        dose.SetName(slicer.mrmlScene.GenerateUniqueName("dose"))  # inherited from vtkMRMLNode
        iso = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLIsodoseNode")
        iso.SetAndObserveDoseVolumeNode(dose)
        slicer.modules.isodose.logic().CreateIsodoseSurfaces(iso)
        seg.GetSegmentation().AddEmptySegment("a")
        p.segmentation.GetDisplayNode().SetVisibility2DOutline(True)
        slicer.util.addVolumeFromArray(None, ijkToRAS=None, name="x")

    class W(ScriptedLoadableModuleWidget):
        def setup(self):
            ScriptedLoadableModuleWidget.setup(self)
            self.resourcePath("UI/x.ui")
"""


def test_checker_accepts_correct_calls(lists):
    assert check(lists, GOOD_SNIPPET) == []


@pytest.mark.parametrize(
    ("wrong", "expected"),
    [
        (
            "iso.SetAndObserveDoseVolumeNode(dose)",
            "vtkMRMLIsodoseNode has no method SetAndObserveDoseVolumeNod",
        ),
        (
            'dose.SetName(slicer.mrmlScene.GenerateUniqueName("dose"))',
            "vtkMRMLScene has no method GenerateUniqueNam",
        ),
        ('seg.GetSegmentation().AddEmptySegment("a")', "vtkSegmentation has no method AddEmptySegmnt"),
        ("p.segmentation.GetDisplayNode().SetVisibility2DOutline(True)", "no method SetVisibility2DOutlin"),
        ("slicer.modules.isodose.logic().CreateIsodoseSurfaces(iso)", "has no method CreateIsodoseSurface"),
        ('slicer.util.addVolumeFromArray(None, ijkToRAS=None, name="x")', "has no parameter ijkToRas"),
        ("ScriptedLoadableModuleWidget.setup(self)", "ScriptedLoadableModuleWidget has no method setUp"),
        ('self.resourcePath("UI/x.ui")', "no method resourcePaths"),
    ],
)
def test_checker_flags_a_misspelt_call(lists, wrong, expected):
    misspelt = {
        "iso.SetAndObserveDoseVolumeNode(dose)": "iso.SetAndObserveDoseVolumeNod(dose)",
        'dose.SetName(slicer.mrmlScene.GenerateUniqueName("dose"))': 'dose.SetName(slicer.mrmlScene.GenerateUniqueNam("dose"))',
        'seg.GetSegmentation().AddEmptySegment("a")': 'seg.GetSegmentation().AddEmptySegmnt("a")',
        "p.segmentation.GetDisplayNode().SetVisibility2DOutline(True)": "p.segmentation.GetDisplayNode().SetVisibility2DOutlin(True)",
        "slicer.modules.isodose.logic().CreateIsodoseSurfaces(iso)": "slicer.modules.isodose.logic().CreateIsodoseSurface(iso)",
        'slicer.util.addVolumeFromArray(None, ijkToRAS=None, name="x")': 'slicer.util.addVolumeFromArray(None, ijkToRas=None, name="x")',
        "ScriptedLoadableModuleWidget.setup(self)": "ScriptedLoadableModuleWidget.setUp(self)",
        'self.resourcePath("UI/x.ui")': 'self.resourcePaths("UI/x.ui")',
    }[wrong]
    assert wrong in GOOD_SNIPPET
    problems = check(lists, GOOD_SNIPPET.replace(wrong, misspelt))
    assert len(problems) == 1 and expected in problems[0], problems


def test_checker_flags_unknown_functions_classes_and_untracked_objects(lists):
    problems = check(
        lists,
        """
        import slicer
        from slicer.parameterNodeWrapper import parameterNodeWrapper

        @parameterNodeWrapper
        class P:
            ctVolume: slicer.vtkMRMLScalarVolumeNode

        def f(node, p: P):
            slicer.util.arrayFromVolumee(node)
            slicer.util.arrayFromVolume(node, 0)
            slicer.packaging.pip_ensure([], prompt=True)
            slicer.mrmlScene.AddNewNodeByClass("vtkMRMLNoSuchNode")
            node.SetAttribute("a", "b")
            p.ctVolum.GetName()
        """,
    )
    expected = [
        "slicer.util has no arrayFromVolumee",
        "slicer.util.arrayFromVolume takes at most 1 positional arguments",
        "slicer.packaging.pip_ensure has no parameter prompt",
        "class vtkMRMLNoSuchNode is not in the API lists",
        "cannot tell the class of the object SetAttribute is called on",
        "parameter node P has no field or method ctVolum",
        "cannot tell the class of the object GetName is called on",  # the misspelt field has no type
    ]
    assert len(problems) == len(expected), problems
    for text in expected:
        assert any(text in p for p in problems), (text, problems)


def test_checker_follows_annotations_and_helper_return_types(lists):
    source = """
        import slicer
        from slicer import vtkMRMLTableNode

        class Logic:
            def make(self, name: str) -> vtkMRMLTableNode:
                return slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", name)

            def fill(self):
                table = self.make("t")
                table.AddEmptyRow()
                other: vtkMRMLTableNode = slicer.util.getNode("t")  # the annotation alone names the class
                other.SetCellTex(0, 0, "x")
        """
    problems = check(lists, source)
    assert len(problems) == 1 and "vtkMRMLTableNode has no method SetCellTex" in problems[0]


# ------------------------------------------------------------------------------- module contents


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported when the file is imported (module level, if/try blocks included)."""
    tree = ast.parse(path.read_text())
    names = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(node.orelse)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return names


@pytest.mark.parametrize("path", MODULE_FILES, ids=lambda p: p.name)
def test_modules_do_not_import_torch_or_the_core_at_import_time(path):
    assert not _top_level_imports(path) & {"torch", "MambaDoseLib", "MambaDoseTrainingLib", "PyTorchUtils"}


@pytest.mark.parametrize("path", MODULE_FILES, ids=lambda p: p.name)
def test_scripted_module_classes_and_no_hard_slicerrt_dependency(path):
    tree = ast.parse(path.read_text())
    module = path.stem
    classes = {n.name: [_dotted(b) for b in n.bases] for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    assert classes[module] == ["ScriptedLoadableModule"]
    assert classes[f"{module}Logic"] == ["ScriptedLoadableModuleLogic"]
    assert classes[f"{module}Test"] == ["ScriptedLoadableModuleTest"]
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _dotted(node.targets[0]) == "self.parent.dependencies":
            assert isinstance(node.value, ast.List) and node.value.elts == []


def test_prediction_widget_and_parameter_node():
    tree = ast.parse(PREDICTION.read_text())
    classes = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    widget = classes["MambaDosePredictionWidget"]
    assert [_dotted(b) for b in widget.bases] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    wrapper = classes["MambaDosePredictionParameterNode"]
    assert [_dotted(d) for d in wrapper.decorator_list] == [WRAPPER]
    text = PREDICTION.read_text()
    assert "RESEARCH_DISCLAIMER" in text and "disclaimerLabel" in text
    assert 'hasattr(slicer.modules, "isodose")' in text  # SlicerRT detected at run time
    assert "GenerateUniqueName" in text


# ------------------------------------------------------------------------------------- .ui file

QT_CLASS = re.compile(r"^(Q[A-Z]\w*|ctk[A-Z]\w*|qMRML\w+|qSlicer\w+)$")
#: parameter type -> widget classes the parameterNodeWrapper can bind it to
BINDABLE = {
    "bool": {"QCheckBox", "QPushButton"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "int": {"QSpinBox", "QSlider"},
    "str": {"QLineEdit", "QTextEdit"},
    "choice": {"QComboBox"},
    "path": {"ctkPathLineEdit"},
}


def _ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def _parameter_fields() -> dict[str, ast.expr]:
    tree = ast.parse(PREDICTION.read_text())
    wrapper = next(
        n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name.endswith("ParameterNode")
    )
    return {s.target.id: s.annotation for s in wrapper.body if isinstance(s, ast.AnnAssign)}


def test_ui_parses_and_uses_qt_ctk_or_mrml_widgets():
    root = ET.parse(UI_FILE).getroot()
    assert root.find("widget").get("class") == "qMRMLWidget"
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    for name, widget in _ui_widgets().items():
        cls = widget.get("class")
        assert QT_CLASS.match(cls), (name, cls)
        if not cls.startswith("Q"):
            assert cls in custom, f"{cls} is not declared in <customwidgets>"


def test_every_self_ui_name_exists_in_the_ui_file():
    used = set(re.findall(r"self\.ui\.(\w+)", PREDICTION.read_text()))
    assert used, "the widget uses no self.ui names?"
    assert used - set(_ui_widgets()) == set()


def test_parameter_bindings_match_fields_and_widget_types():
    fields = _parameter_fields()
    bound = {}
    for widget in _ui_widgets().values():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = widget
    assert set(bound) == set(fields)
    for field_name, widget in bound.items():
        annotation = ast.unparse(fields[field_name])
        cls = widget.get("class")
        if annotation.startswith("vtkMRML"):
            assert cls == "qMRMLNodeComboBox", field_name
            node_types = [
                s.text
                for p in widget.findall("property")
                if p.get("name") == "nodeTypes"
                for s in p.iter("string")
            ]
            assert node_types == [annotation], field_name
        elif "Choice(" in annotation:
            assert cls in BINDABLE["choice"], field_name
        else:
            kind = {"Path": "path", "pathlib.Path": "path"}.get(annotation, annotation)
            assert cls in BINDABLE[kind], (field_name, cls)


# --------------------------------------------------------------------------- headless training


def test_training_script_paths_source_and_installed_layout(tmp_path):
    module = load_script(TRAINING)  # outside Slicer: no module classes, no error
    source = module.libraryPaths(str(TRAINING.parent))
    assert source == [str(TRAINING.parent), str(ROOT / "MambaDosePrediction")]
    installed = tmp_path / "qt-scripted-modules"
    (installed / "MambaDoseLib").mkdir(parents=True)
    assert module.libraryPaths(str(installed)) == [str(installed)]
    assert set(module.COMMANDS) == {"preprocess", "train", "evaluate"}


def _training_commands_importable() -> bool:
    from MambaDoseLib import cli

    return all(
        importlib.util.find_spec(cli.COMMANDS[c]) is not None for c in ("preprocess", "train", "evaluate")
    )


def test_training_script_runs_the_cli_subset_with_its_exit_codes():
    if not _training_commands_importable():
        pytest.skip("a preprocess/train/evaluate command module is not in the tree yet")
    run = [sys.executable, str(TRAINING)]
    ok = subprocess.run([*run, "train", "--help"], capture_output=True, encoding="utf-8", timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "usage" in ok.stdout
    wrong = subprocess.run([*run, "predict", "--help"], capture_output=True, encoding="utf-8", timeout=60)
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr


if __name__ == "__main__":  # regenerate the manifest: python Testing/test_slicer_layer.py --write-manifest
    if sys.argv[1:] != ["--write-manifest"]:
        sys.exit(f"usage: {WRITE_MANIFEST}")
    checkers = record_modules()
    manifest = manifest_of([use for c in checkers for use in c.uses])
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {MANIFEST}")
    found = [p for c in checkers for p in c.problems]
    if shared_api_present():
        lists = SlicerApi.load()
        found += [f"{u.receiver}.{u.name}: {t}" for u in uses_of(manifest) for t in lists.problems(u)]
    else:
        print(f"the Slicer API lists are not in {SHARED_API}: the names were not checked against them")
    print("\n".join(found))
    sys.exit(1 if found else 0)
