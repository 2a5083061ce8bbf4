"""MambaDose Prediction: predict a radiotherapy dose from a CT and its structures (research use only).

The module only connects Slicer to the core library ``MambaDoseLib``: one call to
``MambaDoseLib.predict.predict_dose`` does the numerics. The core and its dependencies (PyTorch
included) are imported on first use, never when Slicer loads this file.
"""

import importlib
import importlib.metadata
import logging
import os
import re
import threading
import time
import traceback
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
import qt
import slicer
import vtk
from slicer import (
    vtkMRMLColorTableNode,
    vtkMRMLPlotChartNode,
    vtkMRMLPlotSeriesNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLSubjectHierarchyNode,
    vtkMRMLTableNode,
)
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: isodose levels, % of the highest prescription
ISODOSE_PERCENTS = (107, 100, 95, 80, 50, 30)
#: SlicerRT reads a volume as an RT dose when it has this attribute ...
DOSE_VOLUME_ATTRIBUTE = "DicomRtImport.DoseVolume"
#: ... and labels its values in Gy when its subject-hierarchy study has this one set to "GY".
DOSE_UNIT_ATTRIBUTE = "DicomRtImport.DoseUnitName"
#: marks the nodes this module made (only those are ever replaced)
OUTPUT_ATTRIBUTE = "MambaDose.Output"
DOSE_COLOR_TABLE_NAME = "MambaDose dose"
NO_ROI = "(not used)"


class MambaDosePrediction(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MambaDose Prediction"
        self.parent.categories = ["Radiotherapy"]
        self.parent.dependencies = []  # SlicerRT and PyTorch are optional / installed on first use
        self.parent.contributors = ["MambaDose contributors"]
        self.parent.helpText = (
            "Predicts a radiotherapy dose distribution from a planning CT and its structures with "
            "MambaUNetV2. The dose is a model prediction for research, not a deliverable treatment plan."
        )
        self.parent.acknowledgementText = (
            "Trained on the OpenKBP head-and-neck dose prediction challenge data."
        )


@parameterNodeWrapper
class MambaDosePredictionParameterNode:
    """State of the module panel (saved with the scene)."""

    ctVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    testTimeAugmentation: bool = True  # measured better on OpenKBP validation (README)
    useEnsemble: bool = False
    widenPtvHotEnd: bool = False  # calibration.widen_ptv_hot_tail (docs/experiments.md, "Session 12")
    useDvhStream: bool = False  # shipped DVH stream, dvh_stream.compose (docs/experiments.md, "Session 20")
    replaceOutputs: bool = False


class PredictionJob:
    """Runs one prediction in a worker thread; the GUI thread polls ``done``/``total``.

    Only the GUI thread touches MRML: the job gets plain arrays and returns the core's result.
    """

    def __init__(self, run: Callable[..., Any]) -> None:
        self.done = 0
        self.total = 0
        self.result: Any = None
        self.error: BaseException | None = None
        self.startTime = time.perf_counter()
        self._cancelRequested = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(run,), daemon=True)

    def start(self) -> "PredictionJob":
        self.startTime = time.perf_counter()
        self._thread.start()
        return self

    def _work(self, run: Callable[..., Any]) -> None:
        try:
            self.result = run(progress=self._progress, cancel=self._cancelRequested.is_set)
        except BaseException as exc:  # reported by the GUI thread
            self.error = exc

    def _progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def cancel(self) -> None:
        self._cancelRequested.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelRequested.is_set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def elapsedSeconds(self) -> float:
        return time.perf_counter() - self.startTime

    def wait(self) -> Any:
        """Block until the job ends; return its result or raise its error."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.result


class MambaDosePredictionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job: PredictionJob | None = None
        self._jobInputs: dict = {}
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onTimer)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MambaDosePrediction.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MambaDosePredictionLogic()

        import MambaDoseLib  # the package itself is light: strings and the ROI table

        self.ui.disclaimerLabel.text = MambaDoseLib.RESEARCH_DISCLAIMER
        self.ui.structureTable.setHorizontalHeaderLabels(["Segment", "Model ROI", "Prescription (Gy)"])
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.fillStructureTable)
        self.ui.matchButton.connect("clicked(bool)", self.fillStructureTable)
        self.ui.predictButton.connect("clicked(bool)", self.onPredictButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._timer.stop()
        if self._job is not None:
            self._job.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.onCancelButton()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.ctVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume:
                self._parameterNode.ctVolume = firstVolume
        if not self._parameterNode.segmentation:
            firstSegmentation = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
            if firstSegmentation:
                self._parameterNode.segmentation = firstSegmentation

    def setParameterNode(self, inputParameterNode: MambaDosePredictionParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self.fillStructureTable()
        self.updateButtons()

    def updateButtons(self, caller=None, event=None) -> None:
        ready = bool(
            self._parameterNode and self._parameterNode.ctVolume and self._parameterNode.segmentation
        )
        self.ui.predictButton.enabled = ready and self._job is None
        self.ui.predictButton.toolTip = (
            "Predict the dose" if ready else "Select a CT volume and a segmentation"
        )

    # -- the structure table: segment -> model ROI (+ prescription for targets) ----------------------

    def fillStructureTable(self, *unused) -> None:
        """One row per segment, pre-filled by the core's name matching; the user can edit each row."""
        from MambaDoseLib import rois

        table = self.ui.structureTable
        table.setRowCount(0)
        segmentationNode = self._parameterNode.segmentation if self._parameterNode else None
        if not segmentationNode:
            return
        segments = self.logic.segmentNames(segmentationNode)
        mapping, prescriptions, unmatched = self.logic.matchSegments(list(segments.values()))
        table.setRowCount(len(segments))
        for row, (segmentId, name) in enumerate(segments.items()):
            item = qt.QTableWidgetItem(name)
            item.setData(qt.Qt.UserRole, segmentId)
            item.setToolTip(unmatched.get(name, ""))
            table.setItem(row, 0, item)
            roiBox = qt.QComboBox()
            roiBox.addItems([NO_ROI, *rois.ROI_NAMES])
            roiBox.currentText = mapping.get(name, NO_ROI)
            table.setCellWidget(row, 1, roiBox)
            rxBox = qt.QDoubleSpinBox()
            rxBox.setRange(0.0, 100.0)
            rxBox.suffix = " Gy"
            roi = mapping.get(name)
            rxBox.value = prescriptions.get(name, rois.PRESCRIPTION_GY.get(roi, 0.0))
            rxBox.enabled = roi in rois.TARGET_NAMES
            roiBox.connect(
                "currentTextChanged(QString)", lambda text, box=rxBox: self.onRoiChanged(text, box)
            )
            rxBox.connect("valueChanged(double)", lambda gy, box=roiBox: self.onPrescriptionChanged(gy, box))
            table.setCellWidget(row, 2, rxBox)
        table.resizeColumnsToContents()

    @staticmethod
    def onRoiChanged(roi: str, rxBox) -> None:
        """A target row gets the model PTV's prescription; other rows have none."""
        from MambaDoseLib import rois

        rxBox.enabled = roi in rois.TARGET_NAMES
        if roi in rois.TARGET_NAMES and abs(rxBox.value - rois.PRESCRIPTION_GY[roi]) > 1e-6:
            rxBox.value = rois.PRESCRIPTION_GY[roi]

    @staticmethod
    def onPrescriptionChanged(gy: float, roiBox) -> None:
        """The core gives a target the model PTV nearest its prescription: show that PTV."""
        from MambaDoseLib import names, rois

        if roiBox.currentText in rois.TARGET_NAMES and gy >= names.MIN_PRESCRIPTION_GY:
            roiBox.currentText = names.nearest_model_target(gy)

    def structureChoices(self) -> tuple[dict[str, str], dict[str, float]]:
        """(segment ID -> model ROI, segment ID -> prescription Gy for targets) from the table."""
        table = self.ui.structureTable
        mapping, prescriptions = {}, {}
        for row in range(table.rowCount):
            segmentId = table.item(row, 0).data(qt.Qt.UserRole)
            roi = table.cellWidget(row, 1).currentText
            if roi == NO_ROI:
                continue
            mapping[segmentId] = roi
            rxBox = table.cellWidget(row, 2)
            if rxBox.enabled:
                prescriptions[segmentId] = rxBox.value
        return mapping, prescriptions

    # -- Predict Dose: a worker thread, polled by a timer in the GUI thread ---------------------------

    def onPredictButton(self) -> None:
        try:
            if not self.logic.ensureDependencies(self._parameterNode.device):
                return
            mapping, prescriptions = self.structureChoices()
            self._jobInputs = {
                "ctNode": self._parameterNode.ctVolume,
                "replace": self._parameterNode.replaceOutputs,
            }
            self._job = self.logic.startPrediction(
                self._parameterNode.ctVolume,
                self._parameterNode.segmentation,
                mapping,
                prescriptions,
                modelPath=self.ui.modelPathLineEdit.currentPath
                or ("ensemble" if self._parameterNode.useEnsemble else None),
                device=self._parameterNode.device,
                tta=self._parameterNode.testTimeAugmentation,
                widenPtvHotEnd=self._parameterNode.widenPtvHotEnd,
                dvhModelPath=self.ui.dvhModelPathLineEdit.currentPath
                or ("dvh" if self._parameterNode.useDvhStream else None),
            )
        except Exception as exc:
            _showError("Dose prediction could not start", exc)
            return
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self.ui.cancelButton.show()
        self.ui.statusLabel.text = "Predicting..."
        self.updateButtons()
        self._timer.start()

    def onCancelButton(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.ui.statusLabel.text = "Cancelling..."

    def onTimer(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        if job.total:
            self.ui.progressBar.maximum = job.total
            self.ui.progressBar.value = job.done
        if job.running:
            return
        self._timer.stop()
        self._job = None
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        self.updateButtons()
        if job.cancelled:
            self.ui.statusLabel.text = "Cancelled: no dose was made."
            return
        try:
            result = job.wait()
            self.logic.addOutputs(self._jobInputs["ctNode"], result, self._jobInputs["replace"])
        except Exception as exc:
            self.ui.statusLabel.text = "Failed (see the error message)."
            _showError("Dose prediction failed", exc)
            return
        self.ui.statusLabel.text = f"Predicted in {job.elapsedSeconds:.1f} s on {result.device}." + (
            f" {len(result.warnings)} warning(s): see the Python console." if result.warnings else ""
        )


class MambaDosePredictionLogic(ScriptedLoadableModuleLogic):
    """Slicer nodes in, Slicer nodes out; ``MambaDoseLib.predict.predict_dose`` does the numerics.

    Usable without the GUI: ``MambaDosePredictionLogic().predict(ctNode, segmentationNode, mapping)``.
    """

    def getParameterNode(self) -> MambaDosePredictionParameterNode:
        return MambaDosePredictionParameterNode(super().getParameterNode())

    # -- dependencies (first use) -----------------------------------------------------------------

    def ensureDependencies(self, device: str = "auto") -> bool:
        """PyTorch through SlicerPyTorch, then the core's requirements; False if the user declined."""
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            slicer.util.errorDisplay(
                "MambaDose needs PyTorch: install the PyTorch extension (SlicerPyTorch) from the "
                "Extensions Manager, restart Slicer, and try again."
            )
            return False
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            if not slicer.util.confirmOkCancelDisplay(
                "MambaDose needs PyTorch, which is not installed yet. Install it now? "
                "(a download of several hundred MB; it may take minutes)"
            ):
                return False
            if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=">=2.1") is None:
                slicer.util.errorDisplay("PyTorch was not installed; MambaDose cannot predict without it.")
                return False
        self._ensureRequirements()
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            slicer.util.errorDisplay(
                f"A GPU was requested but PyTorch {torch.__version__} cannot use a CUDA GPU here "
                "(a CPU-only build, or no NVIDIA driver). Choose 'auto' or 'cpu', or reinstall PyTorch "
                "with CUDA in the PyTorch Utils module and restart Slicer."
            )
            return False
        return True

    @staticmethod
    def _ensureRequirements() -> None:
        """The core's Python requirements: ``slicer.packaging.pip_ensure`` (Slicer >= 5.12), else pip_install."""
        path = os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")
        try:
            importlib.import_module("slicer.packaging")
        except ImportError:  # Slicer < 5.12: install what is missing (versions are not checked)
            missing = [line for line in _requirementLines(path) if not _distributionInstalled(line)]
            if not missing:
                return
            if not slicer.util.confirmOkCancelDisplay(
                "MambaDose needs these Python packages: " + ", ".join(missing)
            ):
                raise RuntimeError("the Python packages MambaDose needs were not installed") from None
            slicer.util.pip_install(missing)
            slicer.util.infoDisplay("Python packages were installed. If they fail to import, restart Slicer.")
            return
        slicer.packaging.pip_ensure(slicer.packaging.load_requirements(path), requester="MambaDose")

    # -- inputs ------------------------------------------------------------------------------------

    @staticmethod
    def segmentNames(segmentationNode: vtkMRMLSegmentationNode) -> dict[str, str]:
        """Segment ID -> segment name, in the segmentation's order."""
        segmentation = segmentationNode.GetSegmentation()
        ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
        return {segmentId: segmentation.GetSegment(segmentId).GetName() for segmentId in ids}

    @staticmethod
    def matchSegments(names: list[str]) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
        """The core's name matching: (name -> model ROI, name -> prescription Gy, name -> why unmatched)."""
        from MambaDoseLib.names import match_structures

        return match_structures(names)

    @staticmethod
    def ijkToRas(volumeNode: vtkMRMLScalarVolumeNode) -> np.ndarray:
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    def coreInputs(
        self,
        ctNode: vtkMRMLScalarVolumeNode,
        segmentationNode: vtkMRMLSegmentationNode,
        mapping: dict[str, str],
        prescriptions: dict[str, float] | None = None,
    ) -> tuple[Any, dict[str, Any], dict[str, float]]:
        """CT and structures as core Volumes on the CT grid, named so that the core's matching
        reproduces the table (GUI thread: reads MRML).

        mapping: segment ID -> model ROI. prescriptions: segment ID -> Gy for targets (default: the
        model PTV's). A target keeps its segment name and gets its prescription (the core maps it
        to the nearest model PTV); another segment keeps its name when the core's matching gives
        the chosen ROI, else it is passed under the ROI's name. Masks under one name are joined.
        Returns (ct Volume in HU, structure name -> mask Volume, target name -> prescription Gy).
        """
        from MambaDoseLib.errors import InputError
        from MambaDoseLib.geometry import Volume
        from MambaDoseLib.rois import PRESCRIPTION_GY

        if not mapping:
            raise InputError(
                f"segmentation '{segmentationNode.GetName()}': no segment is mapped to a model ROI"
            )
        segments = self.segmentNames(segmentationNode)
        automatic, _, _ = self.matchSegments(list(segments.values()))
        ijkToRas = self.ijkToRas(ctNode)
        ct = Volume.from_ijk_to_ras(slicer.util.arrayFromVolume(ctNode).astype(np.float32), ijkToRas)
        masks: dict[str, np.ndarray] = {}
        targetGy: dict[str, float] = {}
        for segmentId, roi in mapping.items():
            name = segments[segmentId]
            if roi in PRESCRIPTION_GY:
                targetGy[name] = (prescriptions or {}).get(segmentId) or PRESCRIPTION_GY[roi]
            elif automatic.get(name) != roi:
                name = roi
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, ctNode) > 0
            masks[name] = masks[name] | mask if name in masks else mask
        structures = {name: Volume.from_ijk_to_ras(mask, ijkToRas) for name, mask in masks.items()}
        return ct, structures, targetGy

    # -- prediction --------------------------------------------------------------------------------

    def startPrediction(
        self,
        ctNode: vtkMRMLScalarVolumeNode,
        segmentationNode: vtkMRMLSegmentationNode,
        mapping: dict[str, str],
        prescriptions: dict[str, float] | None = None,
        modelPath: str | None = None,
        device: str = "auto",
        tta: bool = False,
        widenPtvHotEnd: bool = False,
        dvhModelPath: str | None = None,
    ) -> PredictionJob:
        """Read the inputs here (GUI thread) and run ``predict_dose`` in a worker thread
        (``dvhModelPath``: the optional DVH stream inside the structures, ``dvh_stream.compose``;
        ``"dvh"``: the shipped one)."""
        from MambaDoseLib.predict import predict_dose

        ct, structures, targetGy = self.coreInputs(ctNode, segmentationNode, mapping, prescriptions)

        def run(progress, cancel):
            return predict_dose(
                ct,
                structures,
                prescriptions=targetGy,
                model_path=modelPath,
                device=device,
                tta=tta,
                progress=progress,
                cancel=cancel,
                widen_ptv_hot_end=widenPtvHotEnd,
                dvh_model_path=dvhModelPath,
            )

        return PredictionJob(run).start()

    def predict(
        self,
        ctNode: vtkMRMLScalarVolumeNode,
        segmentationNode: vtkMRMLSegmentationNode,
        mapping: dict[str, str],
        prescriptions: dict[str, float] | None = None,
        modelPath: str | None = None,
        device: str = "auto",
        tta: bool = False,
        replace: bool = False,
        widenPtvHotEnd: bool = False,
        dvhModelPath: str | None = None,
    ) -> dict[str, Any]:
        """Predict and add the outputs (blocking; for scripts and tests). Returns the output nodes."""
        job = self.startPrediction(
            ctNode,
            segmentationNode,
            mapping,
            prescriptions,
            modelPath,
            device,
            tta,
            widenPtvHotEnd,
            dvhModelPath,
        )
        return self.addOutputs(ctNode, job.wait(), replace)

    # -- outputs -----------------------------------------------------------------------------------

    def addOutputs(
        self, ctNode: vtkMRMLScalarVolumeNode, result: Any, replace: bool = False
    ) -> dict[str, Any]:
        """Dose volume, isodose lines, DVH metrics table and DVH chart of a ``PredictionResult``."""
        for warning in result.warnings:
            logging.warning("MambaDose: %s", warning)
        doseNode = self.addDoseVolume(ctNode, result.dose, replace)
        outputs = {
            "dose": doseNode,
            "isodose": self.addIsodose(doseNode, result.highest_prescription_gy, replace),
            "metrics": self.addMetricsTable(ctNode, result.metrics, replace),
            "dvhChart": self.addDvhChart(ctNode, result.dvh, replace),
        }
        self.showResults(ctNode, doseNode, outputs["dvhChart"])
        return outputs

    @staticmethod
    def outputNode(className: str, name: str, replace: bool):
        """A new node named ``name`` (made unique), or with ``replace`` this module's earlier one."""
        if replace:
            node = slicer.util.getFirstNodeByClassByName(className, name)
            if node is not None and node.GetAttribute(OUTPUT_ATTRIBUTE):
                return node
        node = slicer.mrmlScene.AddNewNodeByClass(className, slicer.mrmlScene.GenerateUniqueName(name))
        node.SetAttribute(OUTPUT_ATTRIBUTE, "1")
        return node

    def addDoseVolume(
        self, ctNode: vtkMRMLScalarVolumeNode, dose: Any, replace: bool
    ) -> vtkMRMLScalarVolumeNode:
        """The predicted dose (Gy, on the CT grid) as an RT dose volume for SlicerRT."""
        from MambaDoseLib import RESEARCH_DISCLAIMER

        doseNode: vtkMRMLScalarVolumeNode = self.outputNode(
            "vtkMRMLScalarVolumeNode", f"{ctNode.GetName()} predicted dose", replace
        )
        slicer.util.updateVolumeFromArray(doseNode, np.asarray(dose.array, dtype=np.float32))
        doseNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(dose.ijk_to_ras()))
        doseNode.SetAttribute(DOSE_VOLUME_ATTRIBUTE, "1")
        doseNode.SetDescription(RESEARCH_DISCLAIMER)
        self.placeInStudy(ctNode, doseNode)
        doseNode.CreateDefaultDisplayNodes()
        display = doseNode.GetScalarVolumeDisplayNode()
        maxGy = max(float(np.max(dose.array)), 1.0)
        display.SetAndObserveColorNodeID(self.doseColorTable().GetID())
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, maxGy)
        display.AutoThresholdOff()
        display.SetThreshold(0.05 * maxGy, maxGy)
        display.ApplyThresholdOn()
        legend = slicer.modules.colors.logic().AddDefaultColorLegendDisplayNode(doseNode)
        legend.SetTitleText("Dose (Gy)")
        legend.SetLabelFormat("%.0f")
        return doseNode

    @staticmethod
    def placeInStudy(ctNode: vtkMRMLScalarVolumeNode, doseNode: vtkMRMLScalarVolumeNode) -> None:
        """Put the dose under the CT's study (made if the CT has none), with dose unit GY."""
        shNode: vtkMRMLSubjectHierarchyNode = slicer.mrmlScene.GetSubjectHierarchyNode()
        ctParent = shNode.GetItemParent(shNode.GetItemByDataNode(ctNode))
        study = ctParent
        unit = shNode.GetItemAttribute(study, DOSE_UNIT_ATTRIBUTE)
        if not shNode.IsItemLevel(study, "Study") or unit not in ("", "GY"):
            name = f"{ctNode.GetName()} MambaDose"
            study = shNode.GetItemChildWithName(ctParent, name) or shNode.CreateStudyItem(ctParent, name)
        shNode.SetItemAttribute(study, DOSE_UNIT_ATTRIBUTE, "GY")
        shNode.SetItemParent(shNode.GetItemByDataNode(doseNode), study)

    @staticmethod
    def doseColorTable() -> vtkMRMLColorTableNode:
        """A blue -> green -> yellow -> red colour table for dose (made once per scene)."""
        table: vtkMRMLColorTableNode = slicer.util.getFirstNodeByClassByName(
            "vtkMRMLColorTableNode", DOSE_COLOR_TABLE_NAME
        )
        if table is not None:
            return table
        table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", DOSE_COLOR_TABLE_NAME)
        table.SetTypeToUser()
        table.SetNumberOfColors(256)
        anchors = np.array([[0, 0, 0.6], [0, 0.5, 1], [0, 0.9, 0.3], [1, 1, 0], [1, 0.5, 0], [0.8, 0, 0]])
        positions = np.linspace(0, 1, len(anchors))
        for index, t in enumerate(np.linspace(0, 1, 256)):
            r, g, b = (np.interp(t, positions, anchors[:, c]) for c in range(3))
            table.SetColor(index, float(r), float(g), float(b), 1.0)
        return table

    def addIsodose(self, doseNode: vtkMRMLScalarVolumeNode, referenceGy: float, replace: bool):
        """Isodose lines at ISODOSE_PERCENTS of ``referenceGy``: SlicerRT's Isodose if present, else segments."""
        levels = [(percent, percent / 100.0 * referenceGy) for percent in ISODOSE_PERCENTS]
        if hasattr(slicer.modules, "isodose"):
            return self.slicerRtIsodose(doseNode, levels)
        return self.isodoseSegmentation(doseNode, levels, replace)

    @staticmethod
    def slicerRtIsodose(doseNode: vtkMRMLScalarVolumeNode, levels: list[tuple[int, float]]):
        isodoseLogic = slicer.modules.isodose.logic()
        isodoseNode = slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLIsodoseNode", slicer.mrmlScene.GenerateUniqueName(f"{doseNode.GetName()} isodose")
        )
        isodoseNode.SetAndObserveDoseVolumeNode(doseNode)
        colorTable = isodoseLogic.SetupColorTableNodeForDoseVolumeNode(doseNode)
        isodoseNode.SetAndObserveColorTableNode(colorTable)
        isodoseLogic.SetNumberOfIsodoseLevels(isodoseNode, len(levels))
        for index, (percent, gy) in enumerate(sorted(levels, key=lambda level: level[1])):
            r, g, b = _levelColor(percent)
            colorTable.SetColor(index, f"{gy:.1f}", r, g, b, 1.0)
        isodoseNode.SetDoseUnits(slicer.vtkMRMLIsodoseNode.Gy)  # levels are named in Gy
        isodoseNode.RelativeRepresentationFlagOff()
        isodoseNode.ShowIsodoseLinesOn()
        isodoseLogic.CreateIsodoseSurfaces(isodoseNode)
        return isodoseNode

    def isodoseSegmentation(
        self, doseNode: vtkMRMLScalarVolumeNode, levels: list[tuple[int, float]], replace: bool
    ):
        """Fallback without SlicerRT: one segment per level (dose >= level), shown as outlines."""
        segmentationNode: vtkMRMLSegmentationNode = self.outputNode(
            "vtkMRMLSegmentationNode", f"{doseNode.GetName()} isodose", replace
        )
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(doseNode)
        segmentation = segmentationNode.GetSegmentation()
        segmentation.RemoveAllSegments()
        doseGy = slicer.util.arrayFromVolume(doseNode)
        for percent, gy in levels:
            segmentId = segmentation.AddEmptySegment("", f"{percent}% ({gy:.1f} Gy)", _levelColor(percent))
            mask = (doseGy >= gy).astype(np.uint8)
            slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentationNode, segmentId, doseNode)
        display = segmentationNode.GetDisplayNode()
        display.SetVisibility2DFill(False)
        display.SetVisibility2DOutline(True)
        return segmentationNode

    def addMetricsTable(
        self, ctNode: vtkMRMLScalarVolumeNode, rows: list[dict[str, Any]], replace: bool
    ) -> vtkMRMLTableNode:
        """One row per ROI, one column per metric of the core (volume cc, Dmean, D2, ..., HI, V95)."""
        table: vtkMRMLTableNode = self.outputNode(
            "vtkMRMLTableNode", f"{ctNode.GetName()} predicted DVH metrics", replace
        )
        table.RemoveAllColumns()
        columns = list(dict.fromkeys(key for row in rows for key in row))
        for index, name in enumerate(columns):
            table.AddColumn()
            table.RenameColumn(index, name)
            if all(isinstance(row.get(name), (int, float)) for row in rows):
                table.SetColumnType(name, vtk.VTK_DOUBLE)
            table.SetColumnUnitLabel(name, _metricUnit(name))
        for row in rows:
            rowIndex = table.AddEmptyRow()
            for index, name in enumerate(columns):
                value = row.get(name)
                table.SetCellText(rowIndex, index, _cellText(value))
        return table

    def addDvhChart(
        self, ctNode: vtkMRMLScalarVolumeNode, curves: Any, replace: bool
    ) -> vtkMRMLPlotChartNode:
        """A DVH chart with one series per ROI (cumulative volume % against dose in Gy)."""
        chart: vtkMRMLPlotChartNode = self.outputNode(
            "vtkMRMLPlotChartNode", f"{ctNode.GetName()} predicted DVH", replace
        )
        chart.RemoveAllPlotSeriesNodeIDs()
        chart.SetTitle("Predicted DVH (research prediction)")
        chart.SetXAxisTitle("Dose (Gy)")
        chart.SetYAxisTitle("Volume (%)")
        for structure, (doseGy, volumePercent) in curves.items():
            name = f"{ctNode.GetName()} DVH {structure}"
            table: vtkMRMLTableNode = self.outputNode("vtkMRMLTableNode", name, replace)
            slicer.util.updateTableFromArray(
                table,
                [np.asarray(doseGy, float), np.asarray(volumePercent, float)],
                ["dose_gy", "volume_percent"],
            )
            series: vtkMRMLPlotSeriesNode = self.outputNode("vtkMRMLPlotSeriesNode", name, replace)
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName("dose_gy")
            series.SetYColumnName("volume_percent")
            series.SetPlotType(vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(vtkMRMLPlotSeriesNode.MarkerStyleNone)
            series.SetUniqueColor()
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
        return chart

    @staticmethod
    def showResults(
        ctNode: vtkMRMLScalarVolumeNode, doseNode: vtkMRMLScalarVolumeNode, chart: vtkMRMLPlotChartNode
    ) -> None:
        """Dose over the CT in the slice views; the DVH chart in a layout with the slice views."""
        slicer.util.setSliceViewerLayers(background=ctNode, foreground=doseNode, foregroundOpacity=0.5)
        if slicer.app.layoutManager() is None:  # no main window (batch mode)
            return
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView)
        slicer.modules.plots.logic().ShowChartInLayout(chart)


def _showError(context: str, exc: Exception) -> None:
    """An error dialog: the core's one-line message for bad input, the traceback otherwise."""
    from MambaDoseLib.errors import MambaDoseError

    logging.error("%s: %s", context, exc)
    if isinstance(exc, MambaDoseError):
        slicer.util.errorDisplay(f"{context}: {exc}")
    else:
        slicer.util.errorDisplay(f"{context}: {exc}", detailedText=traceback.format_exc())


def _requirementLines(path: str) -> list[str]:
    with open(path) as f:
        return [line.split("#", 1)[0].strip() for line in f if line.split("#", 1)[0].strip()]


def _distributionInstalled(requirement: str) -> bool:
    try:
        importlib.metadata.version(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _levelColor(percent: int) -> tuple[float, float, float]:
    """Isodose colour: red for hot spots, through yellow and green, to blue for low dose."""
    t = min(max((percent - 30) / 77.0, 0.0), 1.0)
    anchors = np.array([[0.0, 0.3, 1.0], [0.0, 0.8, 0.3], [1.0, 0.9, 0.0], [1.0, 0.0, 0.0]])
    return tuple(float(np.interp(t, np.linspace(0, 1, 4), anchors[:, c])) for c in range(3))


def _metricUnit(name: str) -> str:
    if name.startswith("D") and name not in ("D",):
        return "Gy"
    if name == "volume_cc":
        return "cc"
    if name.startswith("V"):
        return "%"
    return ""


def _cellText(value: Any) -> str:
    """Table cell text: 4 decimals for numbers, empty for missing or NaN."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


class MambaDosePredictionTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: phantom nodes -> logic -> dose, metrics table and isodose checked."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PhantomPrediction()
        self.setUp()
        self.test_SecondRunKeepsFirst()

    def phantomNodes(self) -> tuple[vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode]:
        """The core's synthetic head-and-neck phantom as a CT volume node and a segmentation node."""
        from MambaDoseLib.geometry import patient_to_volumes
        from MambaDoseLib.phantom import make_phantom

        ct, masks = patient_to_volumes(make_phantom(shape=(96, 96, 64), with_dose=False))
        ctNode = slicer.util.addVolumeFromArray(ct.array, ijkToRAS=ct.ijk_to_ras(), name="Phantom CT")
        segmentationNode: vtkMRMLSegmentationNode = slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", "Phantom structures"
        )
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(ctNode)
        for roi, mask in masks.items():
            segmentId = segmentationNode.GetSegmentation().AddEmptySegment(roi, roi)
            slicer.util.updateSegmentBinaryLabelmapFromArray(
                mask.array.astype(np.uint8), segmentationNode, segmentId, ctNode
            )
        return ctNode, segmentationNode

    def autoMapping(self, segmentationNode: vtkMRMLSegmentationNode) -> dict[str, str]:
        logic = MambaDosePredictionLogic()
        segments = logic.segmentNames(segmentationNode)
        mapping, _, unmatched = logic.matchSegments(list(segments.values()))
        self.assertEqual(unmatched, {})
        return {segmentId: mapping[name] for segmentId, name in segments.items()}

    def test_PhantomPrediction(self):
        self.delayDisplay("Predicting the phantom's dose")
        ctNode, segmentationNode = self.phantomNodes()
        mapping = self.autoMapping(segmentationNode)
        outputs = MambaDosePredictionLogic().predict(ctNode, segmentationNode, mapping, device="cpu")

        doseNode: vtkMRMLScalarVolumeNode = outputs["dose"]
        np.testing.assert_allclose(
            MambaDosePredictionLogic.ijkToRas(doseNode), MambaDosePredictionLogic.ijkToRas(ctNode), atol=1e-4
        )
        dose = slicer.util.arrayFromVolume(doseNode)
        self.assertEqual(dose.shape, slicer.util.arrayFromVolume(ctNode).shape)
        self.assertTrue(np.all(np.isfinite(dose)))
        self.assertGreaterEqual(float(dose.min()), 0.0)
        self.assertGreater(float(dose.max()), 10.0)
        self.assertLess(float(dose.max()), 100.0)
        self.assertEqual(doseNode.GetAttribute(DOSE_VOLUME_ATTRIBUTE), "1")

        table: vtkMRMLTableNode = outputs["metrics"]
        self.assertEqual(table.GetNumberOfRows(), len(mapping))  # one row per structure

        if hasattr(slicer.modules, "isodose"):
            rtIsodose: vtkMRMLIsodoseNode = outputs["isodose"]  # noqa: F821 (SlicerRT class, only annotated)
            self.assertIsNotNone(rtIsodose.GetIsosurfacesModelNode())
        else:
            isodose: vtkMRMLSegmentationNode = outputs["isodose"]
            self.assertEqual(isodose.GetSegmentation().GetNumberOfSegments(), len(ISODOSE_PERCENTS))
        self.delayDisplay("Phantom prediction passed")

    def test_SecondRunKeepsFirst(self):
        ctNode, segmentationNode = self.phantomNodes()
        mapping = self.autoMapping(segmentationNode)
        logic = MambaDosePredictionLogic()
        first: vtkMRMLScalarVolumeNode = logic.predict(ctNode, segmentationNode, mapping, device="cpu")[
            "dose"
        ]
        second: vtkMRMLScalarVolumeNode = logic.predict(ctNode, segmentationNode, mapping, device="cpu")[
            "dose"
        ]
        self.assertNotEqual(first.GetID(), second.GetID())
        self.assertNotEqual(first.GetName(), second.GetName())
        outputs = logic.predict(ctNode, segmentationNode, mapping, device="cpu", replace=True)
        replaced: vtkMRMLScalarVolumeNode = outputs["dose"]
        self.assertEqual(first.GetID(), replaced.GetID())
