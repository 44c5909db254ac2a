/* FMI 3.0 adapter (co-simulation and model exchange in one binary) over ecm_instance.c. */
#include <stdlib.h>
#include <string.h>

#include "ecm_instance.h"
#include "fmi3Functions.h"

typedef struct {
    bt_instance model;
    fmi3InstanceEnvironment environment;
    fmi3LogMessageCallback log_message;
    fmi3Boolean debug_logging;
} Instance;

typedef struct {
    bt_snapshot saved;
    bt_mode mode;
} SavedState;

static void log_message(void *owner, bt_status status, const char *message) {
    Instance *inst = (Instance *)owner;
    const char *category = status == BT_ERROR ? "logStatusError" : "logStatusWarning";
    if (status == BT_OK && !inst->debug_logging) return;
    if (inst->log_message) inst->log_message(inst->environment, (fmi3Status)status, category, message);
}

static fmi3Status status_of(bt_status s) { return (fmi3Status)s; }

static bt_instance *model(fmi3Instance instance) { return &((Instance *)instance)->model; }

static fmi3Status unsupported(fmi3Instance instance, const char *function) {
    return status_of(bt_fail(model(instance),
                             "%s is not supported by this FMU (see modelDescription.xml)",
                             function));
}

static fmi3Instance instantiate(fmi3String instanceName, fmi3String instantiationToken,
                                fmi3Boolean loggingOn, fmi3InstanceEnvironment environment,
                                fmi3LogMessageCallback logMessage, int model_exchange) {
    Instance *inst;
    (void)instanceName;
    if (!instantiationToken || strcmp(instantiationToken, BT_INSTANTIATION_TOKEN) != 0) {
        if (logMessage) {
            logMessage(environment, fmi3Error, "logStatusError",
                       "fmi3Instantiate: the instantiation token does not match this binary's "
                       "(modelDescription.xml and binary come from different exports)");
        }
        return NULL;
    }
    inst = (Instance *)calloc(1, sizeof(Instance));
    if (!inst) return NULL;
    inst->environment = environment;
    inst->log_message = logMessage;
    inst->debug_logging = loggingOn;
    bt_instance_setup(&inst->model, model_exchange, log_message, inst);
    return inst;
}

/* ---------------------------------------------------------------- common functions */

const char *fmi3GetVersion(void) { return fmi3Version; }

fmi3Status fmi3SetDebugLogging(fmi3Instance instance, fmi3Boolean loggingOn, size_t nCategories,
                               const fmi3String categories[]) {
    (void)nCategories;
    (void)categories;
    ((Instance *)instance)->debug_logging = loggingOn;
    return fmi3OK;
}

fmi3Instance fmi3InstantiateModelExchange(fmi3String instanceName, fmi3String instantiationToken,
                                          fmi3String resourcePath, fmi3Boolean visible,
                                          fmi3Boolean loggingOn,
                                          fmi3InstanceEnvironment instanceEnvironment,
                                          fmi3LogMessageCallback logMessage) {
    (void)resourcePath;
    (void)visible;
    return instantiate(instanceName, instantiationToken, loggingOn, instanceEnvironment,
                       logMessage, 1);
}

fmi3Instance fmi3InstantiateCoSimulation(
    fmi3String instanceName, fmi3String instantiationToken, fmi3String resourcePath,
    fmi3Boolean visible, fmi3Boolean loggingOn, fmi3Boolean eventModeUsed,
    fmi3Boolean earlyReturnAllowed, const fmi3ValueReference requiredIntermediateVariables[],
    size_t nRequiredIntermediateVariables, fmi3InstanceEnvironment instanceEnvironment,
    fmi3LogMessageCallback logMessage, fmi3IntermediateUpdateCallback intermediateUpdate) {
    (void)resourcePath;
    (void)visible;
    (void)eventModeUsed; /* hasEventMode is false: the FMU never asks for event mode */
    (void)earlyReturnAllowed;
    (void)requiredIntermediateVariables;
    (void)nRequiredIntermediateVariables;
    (void)intermediateUpdate;
    return instantiate(instanceName, instantiationToken, loggingOn, instanceEnvironment,
                       logMessage, 0);
}

fmi3Instance fmi3InstantiateScheduledExecution(
    fmi3String instanceName, fmi3String instantiationToken, fmi3String resourcePath,
    fmi3Boolean visible, fmi3Boolean loggingOn, fmi3InstanceEnvironment instanceEnvironment,
    fmi3LogMessageCallback logMessage, fmi3ClockUpdateCallback clockUpdate,
    fmi3LockPreemptionCallback lockPreemption, fmi3UnlockPreemptionCallback unlockPreemption) {
    (void)instanceName;
    (void)instantiationToken;
    (void)resourcePath;
    (void)visible;
    (void)loggingOn;
    (void)clockUpdate;
    (void)lockPreemption;
    (void)unlockPreemption;
    if (logMessage) {
        logMessage(instanceEnvironment, fmi3Error, "logStatusError",
                   "fmi3InstantiateScheduledExecution: this FMU supports co-simulation and "
                   "model exchange only");
    }
    return NULL;
}

void fmi3FreeInstance(fmi3Instance instance) { free(instance); }

fmi3Status fmi3EnterInitializationMode(fmi3Instance instance, fmi3Boolean toleranceDefined,
                                       fmi3Float64 tolerance, fmi3Float64 startTime,
                                       fmi3Boolean stopTimeDefined, fmi3Float64 stopTime) {
    (void)toleranceDefined;
    (void)tolerance;
    (void)stopTimeDefined;
    (void)stopTime;
    return status_of(bt_enter_initialization(model(instance), startTime));
}

fmi3Status fmi3ExitInitializationMode(fmi3Instance instance) {
    return status_of(bt_exit_initialization(model(instance)));
}

fmi3Status fmi3EnterEventMode(fmi3Instance instance) {
    model(instance)->mode = BT_EVENT;
    return fmi3OK;
}

fmi3Status fmi3Terminate(fmi3Instance instance) {
    model(instance)->mode = BT_TERMINATED;
    return fmi3OK;
}

fmi3Status fmi3Reset(fmi3Instance instance) {
    bt_instance_defaults(model(instance));
    return fmi3OK;
}

fmi3Status fmi3GetFloat64(fmi3Instance instance, const fmi3ValueReference valueReferences[],
                          size_t nValueReferences, fmi3Float64 values[], size_t nValues) {
    size_t i;
    if (nValues != nValueReferences) {
        return status_of(bt_fail(model(instance), "fmi3GetFloat64: every variable is a scalar, "
                                                  "so nValues must equal nValueReferences"));
    }
    for (i = 0; i < nValueReferences; i++) {
        if (bt_get_real(model(instance), valueReferences[i], &values[i]) != BT_OK) return fmi3Error;
    }
    return fmi3OK;
}

fmi3Status fmi3SetFloat64(fmi3Instance instance, const fmi3ValueReference valueReferences[],
                          size_t nValueReferences, const fmi3Float64 values[], size_t nValues) {
    size_t i;
    if (nValues != nValueReferences) {
        return status_of(bt_fail(model(instance), "fmi3SetFloat64: every variable is a scalar, "
                                                  "so nValues must equal nValueReferences"));
    }
    for (i = 0; i < nValueReferences; i++) {
        if (bt_set_real(model(instance), valueReferences[i], values[i]) != BT_OK) return fmi3Error;
    }
    return fmi3OK;
}

/* Every variable is a Float64: the other typed accessors only accept empty calls. */
#define BT_NO_GETTER(Type, CType)                                                            \
    fmi3Status fmi3Get##Type(fmi3Instance instance,                                          \
                             const fmi3ValueReference valueReferences[],                     \
                             size_t nValueReferences, CType values[], size_t nValues) {      \
        (void)valueReferences;                                                               \
        (void)values;                                                                        \
        (void)nValues;                                                                       \
        return nValueReferences == 0 ? fmi3OK                                                \
                                     : unsupported(instance, "fmi3Get" #Type " (no " #Type   \
                                                             " variables)");                 \
    }
#define BT_NO_SETTER(Type, CType)                                                            \
    fmi3Status fmi3Set##Type(fmi3Instance instance,                                          \
                             const fmi3ValueReference valueReferences[],                     \
                             size_t nValueReferences, const CType values[], size_t nValues) { \
        (void)valueReferences;                                                               \
        (void)values;                                                                        \
        (void)nValues;                                                                       \
        return nValueReferences == 0 ? fmi3OK                                                \
                                     : unsupported(instance, "fmi3Set" #Type " (no " #Type   \
                                                             " variables)");                 \
    }
#define BT_NO_ACCESSORS(Type, CType) BT_NO_GETTER(Type, CType) BT_NO_SETTER(Type, CType)

BT_NO_ACCESSORS(Float32, fmi3Float32)
BT_NO_ACCESSORS(Int8, fmi3Int8)
BT_NO_ACCESSORS(UInt8, fmi3UInt8)
BT_NO_ACCESSORS(Int16, fmi3Int16)
BT_NO_ACCESSORS(UInt16, fmi3UInt16)
BT_NO_ACCESSORS(Int32, fmi3Int32)
BT_NO_ACCESSORS(UInt32, fmi3UInt32)
BT_NO_ACCESSORS(Int64, fmi3Int64)
BT_NO_ACCESSORS(UInt64, fmi3UInt64)
BT_NO_ACCESSORS(Boolean, fmi3Boolean)
BT_NO_ACCESSORS(String, fmi3String)

fmi3Status fmi3GetBinary(fmi3Instance instance, const fmi3ValueReference valueReferences[],
                         size_t nValueReferences, size_t valueSizes[], fmi3Binary values[],
                         size_t nValues) {
    (void)valueReferences;
    (void)valueSizes;
    (void)values;
    (void)nValues;
    return nValueReferences == 0 ? fmi3OK : unsupported(instance, "fmi3GetBinary");
}

fmi3Status fmi3SetBinary(fmi3Instance instance, const fmi3ValueReference valueReferences[],
                         size_t nValueReferences, const size_t valueSizes[],
                         const fmi3Binary values[], size_t nValues) {
    (void)valueReferences;
    (void)valueSizes;
    (void)values;
    (void)nValues;
    return nValueReferences == 0 ? fmi3OK : unsupported(instance, "fmi3SetBinary");
}

fmi3Status fmi3GetClock(fmi3Instance instance, const fmi3ValueReference valueReferences[],
                        size_t nValueReferences, fmi3Clock values[]) {
    (void)valueReferences;
    (void)values;
    return nValueReferences == 0 ? fmi3OK : unsupported(instance, "fmi3GetClock");
}

fmi3Status fmi3SetClock(fmi3Instance instance, const fmi3ValueReference valueReferences[],
                        size_t nValueReferences, const fmi3Clock values[]) {
    (void)valueReferences;
    (void)values;
    return nValueReferences == 0 ? fmi3OK : unsupported(instance, "fmi3SetClock");
}

fmi3Status fmi3GetNumberOfVariableDependencies(fmi3Instance instance,
                                               fmi3ValueReference valueReference,
                                               size_t *nDependencies) {
    (void)valueReference;
    (void)nDependencies;
    return unsupported(instance, "fmi3GetNumberOfVariableDependencies");
}

fmi3Status fmi3GetVariableDependencies(fmi3Instance instance, fmi3ValueReference dependent,
                                       size_t elementIndicesOfDependent[],
                                       fmi3ValueReference independents[],
                                       size_t elementIndicesOfIndependents[],
                                       fmi3DependencyKind dependencyKinds[],
                                       size_t nDependencies) {
    (void)dependent;
    (void)elementIndicesOfDependent;
    (void)independents;
    (void)elementIndicesOfIndependents;
    (void)dependencyKinds;
    (void)nDependencies;
    return unsupported(instance, "fmi3GetVariableDependencies");
}

/* A saved state is a copy of the instance's variables: cheap, so the FMU offers it. */
fmi3Status fmi3GetFMUState(fmi3Instance instance, fmi3FMUState *FMUState) {
    SavedState *s = (SavedState *)*FMUState;
    if (!s) s = (SavedState *)calloc(1, sizeof(SavedState));
    if (!s) return status_of(bt_fail(model(instance), "fmi3GetFMUState: out of memory"));
    s->saved = model(instance)->now;
    s->mode = model(instance)->mode;
    *FMUState = s;
    return fmi3OK;
}

fmi3Status fmi3SetFMUState(fmi3Instance instance, fmi3FMUState FMUState) {
    const SavedState *s = (const SavedState *)FMUState;
    if (!s) return status_of(bt_fail(model(instance), "fmi3SetFMUState: no state given"));
    model(instance)->now = s->saved;
    model(instance)->mode = s->mode;
    return fmi3OK;
}

fmi3Status fmi3FreeFMUState(fmi3Instance instance, fmi3FMUState *FMUState) {
    (void)instance;
    if (FMUState) {
        free(*FMUState);
        *FMUState = NULL;
    }
    return fmi3OK;
}

fmi3Status fmi3SerializedFMUStateSize(fmi3Instance instance, fmi3FMUState FMUState,
                                      size_t *size) {
    (void)instance;
    (void)FMUState;
    *size = sizeof(SavedState);
    return fmi3OK;
}

fmi3Status fmi3SerializeFMUState(fmi3Instance instance, fmi3FMUState FMUState,
                                 fmi3Byte serializedState[], size_t size) {
    if (size != sizeof(SavedState)) {
        return status_of(bt_fail(model(instance), "fmi3SerializeFMUState: wrong size"));
    }
    memcpy(serializedState, FMUState, sizeof(SavedState));
    return fmi3OK;
}

fmi3Status fmi3DeserializeFMUState(fmi3Instance instance, const fmi3Byte serializedState[],
                                   size_t size, fmi3FMUState *FMUState) {
    SavedState *s;
    if (size != sizeof(SavedState)) {
        return status_of(bt_fail(model(instance),
                                 "fmi3DeserializeFMUState: the state comes from another build"));
    }
    s = (SavedState *)*FMUState;
    if (!s) s = (SavedState *)calloc(1, sizeof(SavedState));
    if (!s) return status_of(bt_fail(model(instance), "fmi3DeserializeFMUState: out of memory"));
    memcpy(s, serializedState, sizeof(SavedState));
    *FMUState = s;
    return fmi3OK;
}

fmi3Status fmi3GetDirectionalDerivative(fmi3Instance instance, const fmi3ValueReference unknowns[],
                                        size_t nUnknowns, const fmi3ValueReference knowns[],
                                        size_t nKnowns, const fmi3Float64 seed[], size_t nSeed,
                                        fmi3Float64 sensitivity[], size_t nSensitivity) {
    (void)unknowns;
    (void)nUnknowns;
    (void)knowns;
    (void)nKnowns;
    (void)seed;
    (void)nSeed;
    (void)sensitivity;
    (void)nSensitivity;
    return unsupported(instance, "fmi3GetDirectionalDerivative");
}

fmi3Status fmi3GetAdjointDerivative(fmi3Instance instance, const fmi3ValueReference unknowns[],
                                    size_t nUnknowns, const fmi3ValueReference knowns[],
                                    size_t nKnowns, const fmi3Float64 seed[], size_t nSeed,
                                    fmi3Float64 sensitivity[], size_t nSensitivity) {
    (void)unknowns;
    (void)nUnknowns;
    (void)knowns;
    (void)nKnowns;
    (void)seed;
    (void)nSeed;
    (void)sensitivity;
    (void)nSensitivity;
    return unsupported(instance, "fmi3GetAdjointDerivative");
}

fmi3Status fmi3EnterConfigurationMode(fmi3Instance instance) {
    return unsupported(instance, "fmi3EnterConfigurationMode (no structural parameters)");
}

fmi3Status fmi3ExitConfigurationMode(fmi3Instance instance) {
    return unsupported(instance, "fmi3ExitConfigurationMode (no structural parameters)");
}

/* No clocks: the interval and shift accessors only accept empty calls. */
fmi3Status fmi3GetIntervalDecimal(fmi3Instance instance, const fmi3ValueReference valueReferences[],
                                  size_t nValueReferences, fmi3Float64 intervals[],
                                  fmi3IntervalQualifier qualifiers[]) {
    (void)valueReferences;
    (void)intervals;
    (void)qualifiers;
    return nValueReferences == 0 ? fmi3OK : unsupported(instance, "fmi3GetIntervalDecimal");
}

fmi3Status fmi3GetIntervalFraction(fmi3Instance instance,
                                   const fmi3ValueReference valueReferences[],
                                   size_t nValueReferences, fmi3UInt64 counters[],
                                   fmi3UInt64 resolutions[], fmi3IntervalQualifier qualifiers[]) {
    (void)valueReferences;
    (void)counters;
    (void)resolutions;
    (void)qualifiers;
    return nValueReferences == 0 ? fmi3OK : unsupported(instance, "fmi3GetIntervalFraction");
}

fmi3Status fmi3GetShiftDecimal(fmi3Instance instance, const fmi3ValueReference valueReferences[],
                               size_t nValueReferences, fmi3Float64 shifts[]) {
    (void)valueReferences;
    (void)shifts;
    return nValueReferences == 0 ? fmi3OK : unsupported(instance, "fmi3GetShiftDecimal");
}

fmi3Status fmi3GetShiftFraction(fmi3Instance instance, const fmi3ValueReference valueReferences[],
                                size_t nValueReferences, fmi3UInt64 counters[],
                                fmi3UInt64 resolutions[]) {
    (void)valueReferences;
    (void)counters;
    (void)resolutions;
    return nValueReferences == 0 ? fmi3OK : unsupported(instance, "fmi3GetShiftFraction");
}

fmi3Status fmi3SetIntervalDecimal(fmi3Instance instance, const fmi3ValueReference valueReferences[],
                                  size_t nValueReferences, const fmi3Float64 intervals[]) {
    (void)valueReferences;
    (void)intervals;
    return nValueReferences == 0 ? fmi3OK : unsupported(instance, "fmi3SetIntervalDecimal");
}

fmi3Status fmi3SetIntervalFraction(fmi3Instance instance,
                                   const fmi3ValueReference valueReferences[],
                                   size_t nValueReferences, const fmi3UInt64 counters[],
                                   const fmi3UInt64 resolutions[]) {
    (void)valueReferences;
    (void)counters;
    (void)resolutions;
    return nValueReferences == 0 ? fmi3OK : unsupported(instance, "fmi3SetIntervalFraction");
}

fmi3Status fmi3SetShiftDecimal(fmi3Instance instance, const fmi3ValueReference valueReferences[],
                               size_t nValueReferences, const fmi3Float64 shifts[]) {
    (void)valueReferences;
    (void)shifts;
    return nValueReferences == 0 ? fmi3OK : unsupported(instance, "fmi3SetShiftDecimal");
}

fmi3Status fmi3SetShiftFraction(fmi3Instance instance, const fmi3ValueReference valueReferences[],
                                size_t nValueReferences, const fmi3UInt64 counters[],
                                const fmi3UInt64 resolutions[]) {
    (void)valueReferences;
    (void)counters;
    (void)resolutions;
    return nValueReferences == 0 ? fmi3OK : unsupported(instance, "fmi3SetShiftFraction");
}

fmi3Status fmi3EvaluateDiscreteStates(fmi3Instance instance) {
    (void)instance;
    return fmi3OK;
}

fmi3Status fmi3UpdateDiscreteStates(fmi3Instance instance, fmi3Boolean *discreteStatesNeedUpdate,
                                    fmi3Boolean *terminateSimulation,
                                    fmi3Boolean *nominalsOfContinuousStatesChanged,
                                    fmi3Boolean *valuesOfContinuousStatesChanged,
                                    fmi3Boolean *nextEventTimeDefined,
                                    fmi3Float64 *nextEventTime) {
    bt_note_direction(model(instance));
    *discreteStatesNeedUpdate = fmi3False;
    *terminateSimulation = fmi3False;
    *nominalsOfContinuousStatesChanged = fmi3False;
    *valuesOfContinuousStatesChanged = fmi3False;
    *nextEventTimeDefined = fmi3False;
    *nextEventTime = 0.0;
    return fmi3OK;
}

/* ---------------------------------------------------------------- model exchange */

fmi3Status fmi3EnterContinuousTimeMode(fmi3Instance instance) {
    model(instance)->mode = BT_CONTINUOUS_TIME;
    return fmi3OK;
}

fmi3Status fmi3CompletedIntegratorStep(fmi3Instance instance,
                                       fmi3Boolean noSetFMUStatePriorToCurrentPoint,
                                       fmi3Boolean *enterEventMode,
                                       fmi3Boolean *terminateSimulation) {
    (void)noSetFMUStatePriorToCurrentPoint;
    /* The direction memory is a discrete state; an accepted step is where it may change. */
    bt_note_direction(model(instance));
    *enterEventMode = fmi3False;
    *terminateSimulation = fmi3False;
    return fmi3OK;
}

fmi3Status fmi3SetTime(fmi3Instance instance, fmi3Float64 time) {
    model(instance)->now.time_s = time;
    return fmi3OK;
}

fmi3Status fmi3SetContinuousStates(fmi3Instance instance, const fmi3Float64 continuousStates[],
                                   size_t nContinuousStates) {
    return status_of(bt_set_states(model(instance), continuousStates, nContinuousStates));
}

fmi3Status fmi3GetContinuousStateDerivatives(fmi3Instance instance, fmi3Float64 derivatives[],
                                             size_t nContinuousStates) {
    return status_of(bt_get_derivatives(model(instance), derivatives, nContinuousStates));
}

fmi3Status fmi3GetEventIndicators(fmi3Instance instance, fmi3Float64 eventIndicators[],
                                  size_t nEventIndicators) {
    (void)eventIndicators;
    return status_of(
        bt_check_count(model(instance), "fmi3GetEventIndicators", nEventIndicators, 0));
}

fmi3Status fmi3GetContinuousStates(fmi3Instance instance, fmi3Float64 continuousStates[],
                                   size_t nContinuousStates) {
    return status_of(bt_get_states(model(instance), continuousStates, nContinuousStates));
}

fmi3Status fmi3GetNominalsOfContinuousStates(fmi3Instance instance, fmi3Float64 nominals[],
                                             size_t nContinuousStates) {
    return status_of(bt_get_nominals(model(instance), nominals, nContinuousStates));
}

fmi3Status fmi3GetNumberOfEventIndicators(fmi3Instance instance, size_t *nEventIndicators) {
    (void)instance;
    *nEventIndicators = 0;
    return fmi3OK;
}

fmi3Status fmi3GetNumberOfContinuousStates(fmi3Instance instance, size_t *nContinuousStates) {
    (void)instance;
    *nContinuousStates = BT_N_STATES;
    return fmi3OK;
}

/* ---------------------------------------------------------------- co-simulation */

fmi3Status fmi3EnterStepMode(fmi3Instance instance) {
    model(instance)->mode = BT_STEP;
    return fmi3OK;
}

fmi3Status fmi3GetOutputDerivatives(fmi3Instance instance,
                                    const fmi3ValueReference valueReferences[],
                                    size_t nValueReferences, const fmi3Int32 orders[],
                                    fmi3Float64 values[], size_t nValues) {
    (void)valueReferences;
    (void)nValueReferences;
    (void)orders;
    (void)values;
    (void)nValues;
    return unsupported(instance, "fmi3GetOutputDerivatives");
}

fmi3Status fmi3DoStep(fmi3Instance instance, fmi3Float64 currentCommunicationPoint,
                      fmi3Float64 communicationStepSize,
                      fmi3Boolean noSetFMUStatePriorToCurrentPoint,
                      fmi3Boolean *eventHandlingNeeded, fmi3Boolean *terminateSimulation,
                      fmi3Boolean *earlyReturn, fmi3Float64 *lastSuccessfulTime) {
    bt_status s;
    (void)noSetFMUStatePriorToCurrentPoint;
    s = bt_do_step(model(instance), currentCommunicationPoint, communicationStepSize);
    *eventHandlingNeeded = fmi3False;
    *terminateSimulation = fmi3False;
    *earlyReturn = fmi3False;
    *lastSuccessfulTime = model(instance)->now.time_s;
    return status_of(s);
}

fmi3Status fmi3ActivateModelPartition(fmi3Instance instance, fmi3ValueReference clockReference,
                                      fmi3Float64 activationTime) {
    (void)clockReference;
    (void)activationTime;
    return unsupported(instance, "fmi3ActivateModelPartition (no scheduled execution)");
}
