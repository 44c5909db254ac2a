/*
 * The FMI-independent part of the FMU: variables by value reference, the instance's
 * mode, input and parameter checks, and error messages. fmi2Functions.c and
 * fmi3Functions.c are thin adapters over it.
 */
#ifndef BT_ECM_INSTANCE_H
#define BT_ECM_INSTANCE_H

#include <stddef.h>

#include "ecm_model.h"

typedef enum { BT_OK = 0, BT_WARNING = 1, BT_ERROR = 3 } bt_status;

typedef enum {
    BT_INSTANTIATED,
    BT_INITIALIZATION,
    BT_STEP,            /* co-simulation, between steps */
    BT_EVENT,           /* model exchange */
    BT_CONTINUOUS_TIME, /* model exchange */
    BT_TERMINATED,
    BT_FAILED
} bt_mode;

/* Receives every warning and error, already formatted. */
typedef void bt_logger(void *owner, bt_status status, const char *message);

/* Everything a saved FMU state has to hold. */
typedef struct {
    double time_s;
    double soc_initial;
    double temperature_initial_c;
    bt_params par;
    bt_inputs in;
    bt_state st;
    int voltage_valid; /* st.voltage_v belongs to the present inputs */
} bt_snapshot;

typedef struct {
    bt_snapshot now;
    int model_exchange;
    bt_mode mode;
    bt_logger *log;
    void *log_owner;
} bt_instance;

void bt_instance_setup(bt_instance *inst, int model_exchange, bt_logger *log, void *log_owner);
void bt_instance_defaults(bt_instance *inst);
bt_status bt_fail(bt_instance *inst, const char *format, ...);

bt_status bt_get_real(bt_instance *inst, unsigned int vr, double *value);
bt_status bt_set_real(bt_instance *inst, unsigned int vr, double value);
bt_status bt_enter_initialization(bt_instance *inst, double start_time_s);
bt_status bt_exit_initialization(bt_instance *inst);
bt_status bt_do_step(bt_instance *inst, double current_time_s, double step_s);

bt_status bt_get_states(bt_instance *inst, double x[], size_t n);
bt_status bt_set_states(bt_instance *inst, const double x[], size_t n);
bt_status bt_get_derivatives(bt_instance *inst, double dx[], size_t n);
bt_status bt_get_nominals(bt_instance *inst, double nominals[], size_t n);
bt_status bt_check_count(bt_instance *inst, const char *function, size_t n, size_t expected);
void bt_note_direction(bt_instance *inst);

#endif /* BT_ECM_INSTANCE_H */
