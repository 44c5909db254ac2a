/*
 * Equivalent-circuit cell of batterytwin's EcmTwin (R0 + RC pairs, OCV(SoC, T) with its
 * entropic term, lumped thermal model), without ageing: SoH and the resistance factor
 * are parameters. Sign convention: positive current discharges.
 *
 * The tables in ecm_tables.h are EcmTwin's resampled uniform grids, and every formula
 * below follows twin/models/ecm.py operation by operation, so a co-simulation step gives
 * the same numbers as EcmTwin.step (to the last bits of exp()).
 */
#ifndef BT_ECM_MODEL_H
#define BT_ECM_MODEL_H

#include "ecm_config.h"

/* Continuous states for model exchange: SoC, the RC voltages and (thermal) temperature. */
#define BT_N_STATES (1 + BT_N_RC + BT_THERMAL)

typedef struct {
    double soh;                  /* usable capacity / nominal capacity */
    double resistance_factor;    /* multiplies R0 and R1..Rn; time constants are kept */
    double coulombic_efficiency; /* fraction of charging current stored */
} bt_params;

typedef struct {
    double current_a; /* positive = discharge */
    double ambient_c;
} bt_inputs;

typedef struct {
    double soc;
    double temperature_c;
    double v_rc_v[BT_N_RC];
    double last_direction; /* sign of the last current above the reversal threshold */
    double voltage_v;      /* terminal voltage at the end of the last step */
} bt_state;

/* Usable capacity in Ah. */
double bt_model_capacity_ah(const bt_params *p);

/* Rest state: given SoC and temperature, relaxed RC pairs, voltage = OCV. */
void bt_model_init(bt_state *s, double soc, double temperature_c);

/* One zero-order-hold step of dt_s seconds, as EcmTwin._advance. */
void bt_model_step(bt_state *s, const bt_params *p, const bt_inputs *u, double dt_s);

/* Terminal voltage for the present state and input (algebraic). */
double bt_model_voltage(const bt_state *s, const bt_params *p, const bt_inputs *u);

/* State vector (SoC, v_1..v_n, temperature) and its time derivative. */
void bt_model_get_states(const bt_state *s, double x[BT_N_STATES]);
void bt_model_set_states(bt_state *s, const double x[BT_N_STATES]);
void bt_model_derivatives(const bt_state *s, const bt_params *p, const bt_inputs *u,
                          double dx[BT_N_STATES]);

/* Remember the current's direction if it is above the rest threshold (EcmTwin: _last_dir). */
void bt_model_note_direction(bt_state *s, const bt_params *p, double current_a);

#endif /* BT_ECM_MODEL_H */
